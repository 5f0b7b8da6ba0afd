"""dinet's own ed25519 code (dinet.wire.keys) gives the peer ids and signatures py-libp2p
gives for the same key, byte for byte, and each accepts the other's signatures."""

from __future__ import annotations

import os

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from dinet.p2p.identity import libp2p_key_pair, load_or_create_identity
from dinet.wire.keys import SigningKey, public_key_of, verify

SEEDS = [bytes(32), b"\xff" * 32, bytes(range(32)), b"n" * 32, os.urandom(32), os.urandom(32)]


# Fixed ids: parallel test workers must collect the same tests (two seeds are random).
@pytest.mark.parametrize("seed", SEEDS, ids=["zeros", "ones", "counting", "letters", "random-1", "random-2"])
def test_peer_ids_and_signatures_match_libp2p(seed: bytes) -> None:
    ours, theirs = SigningKey(seed), create_new_key_pair(seed)
    assert ours.peer_id == ID.from_pubkey(theirs.public_key).to_base58()
    assert public_key_of(ours.peer_id) == theirs.public_key.to_bytes()
    for data in (b"", b"dinet-receipt/1 node\n{}", os.urandom(1000)):
        signature = ours.sign(data)
        assert signature == theirs.private_key.sign(data)
        assert theirs.public_key.verify(data, signature)
        assert verify(ours.peer_id, data, theirs.private_key.sign(data))


def test_libp2p_can_read_the_key_back_out_of_our_peer_id() -> None:
    key = SigningKey.generate()
    extracted = ID.from_base58(key.peer_id).extract_public_key()
    assert extracted is not None and extracted.to_bytes() == key.public_key


def test_the_host_key_is_the_stored_identity(tmp_path) -> None:
    key = load_or_create_identity(tmp_path)
    assert load_or_create_identity(tmp_path).peer_id == key.peer_id  # read back, not made anew
    assert ID.from_pubkey(libp2p_key_pair(key).public_key).to_base58() == key.peer_id
