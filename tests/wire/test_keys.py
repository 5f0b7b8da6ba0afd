"""Peer ids and signatures checked without any network library."""

from __future__ import annotations

import pytest

from dinet.wire.keys import SigningKey, is_peer_id, public_key_of, verify


def test_a_signature_verifies_only_for_its_signer_and_its_bytes() -> None:
    alice, mallory = SigningKey.generate(), SigningKey.generate()
    signature = alice.sign(b"pay 1")
    assert verify(alice.peer_id, b"pay 1", signature)
    assert not verify(alice.peer_id, b"pay 2", signature)
    assert not verify(mallory.peer_id, b"pay 1", signature)
    assert not verify(alice.peer_id, b"pay 1", signature[:-1])


def test_a_known_seed_gives_a_known_peer_id() -> None:
    # The zero seed's public key is 3b6a27bc...; libp2p calls the id of that key this.
    key = SigningKey(bytes(32))
    assert key.public_key.hex().startswith("3b6a27bc")
    assert key.peer_id == "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not-a-peer",  # '-' is no base58 digit
        "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",  # a sha256 peer id: its key is not inside
        "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXT",  # one digit short
        "1" * 200,  # far too long to be decoded at all
        "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTé",
    ],
)
def test_a_malformed_peer_id_holds_no_key_and_verifies_nothing(text: str) -> None:
    assert not is_peer_id(text)
    with pytest.raises(ValueError):
        public_key_of(text)
    assert not verify(text, b"x", bytes(64))


def test_a_seed_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError):
        SigningKey(b"short")
