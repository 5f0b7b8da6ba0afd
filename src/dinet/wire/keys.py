"""Ed25519 identities: signing keys, peer ids, and signatures checked against a peer id.

A peer id is libp2p's: the base58btc text of an identity multihash (code 0x00, then
the length) over the protobuf-encoded PublicKey {1: KeyType Ed25519 = 1, 2: the 32 key
bytes}. The key can be read back out of the id, so a verifier needs no key exchange.
Only ed25519 ids are accepted: they are the only kind dinet makes.
"""

from __future__ import annotations

import os
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dinet.wire.ids import PeerId

SEED_SIZE = 32
SIGNATURE_SIZE = 64
_KEY_SIZE = 32
# protobuf PublicKey: field 1 (varint) = 1 (Ed25519); field 2 (bytes), 32 long.
_PROTOBUF_ED25519 = bytes([0x08, 0x01, 0x12, _KEY_SIZE])
# Identity multihash of those 36 bytes: code 0x00, length 36.
_PEER_ID_PREFIX = bytes([0x00, len(_PROTOBUF_ED25519) + _KEY_SIZE]) + _PROTOBUF_ED25519
_MAX_PEER_ID_CHARS = 128  # base58 decoding is quadratic: never decode a long string
_BASE58 = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


class Signer(Protocol):
    """Anything that signs bytes with an ed25519 key (a SigningKey)."""

    def sign(self, data: bytes) -> bytes: ...


class SigningKey:
    """An ed25519 key made from a 32-byte seed, with the peer id it signs as."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_SIZE:
            raise ValueError(f"an ed25519 seed is {SEED_SIZE} bytes, not {len(seed)}")
        self.seed = seed
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_key = self._key.public_key().public_bytes_raw()
        self.peer_id = peer_id_of(self.public_key)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(os.urandom(SEED_SIZE))

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"SigningKey({self.peer_id})"  # never the seed


def peer_id_of(public_key: bytes) -> PeerId:
    """The peer id of a raw 32-byte ed25519 public key."""
    if len(public_key) != _KEY_SIZE:
        raise ValueError(f"an ed25519 public key is {_KEY_SIZE} bytes, not {len(public_key)}")
    return PeerId(_base58_encode(_PEER_ID_PREFIX + public_key))


def public_key_of(peer_id: str) -> bytes:
    """The raw ed25519 public key inside `peer_id`; ValueError if it holds none."""
    if len(peer_id) > _MAX_PEER_ID_CHARS:
        raise ValueError("too long for a peer id")
    raw = _base58_decode(peer_id)
    if len(raw) != len(_PEER_ID_PREFIX) + _KEY_SIZE or not raw.startswith(_PEER_ID_PREFIX):
        raise ValueError(f"{peer_id!r} is not the peer id of an ed25519 key")
    return raw[len(_PEER_ID_PREFIX) :]


def is_peer_id(text: str) -> bool:
    try:
        public_key_of(text)
    except ValueError:
        return False
    return True


def verify(peer_id: str, data: bytes, signature: bytes) -> bool:
    """Whether `signature` is the signature of `data` by the key inside `peer_id`."""
    if len(signature) != SIGNATURE_SIZE:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key_of(peer_id)).verify(signature, data)
    except (ValueError, InvalidSignature):
        return False
    return True


def _base58_encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    digits = bytearray()
    while number:
        number, digit = divmod(number, 58)
        digits.append(_BASE58[digit])
    zeros = len(data) - len(data.lstrip(b"\0"))  # each leading zero byte is a leading '1'
    return (b"1" * zeros + bytes(reversed(digits))).decode()


def _base58_decode(text: str) -> bytes:
    number = 0
    for char in text:
        digit = _BASE58.find(char.encode()) if char.isascii() else -1
        if digit < 0:
            raise ValueError(f"{char!r} is not a base58 digit")
        number = number * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    return b"\0" * zeros + number.to_bytes((number.bit_length() + 7) // 8, "big")
