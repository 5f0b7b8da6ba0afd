"""The secp256k1 account key a client pays from and a node is paid to (an EVM address).

It is not the node's libp2p identity (Ed25519): an EVM chain only knows secp256k1 keys.
It is stored beside the identity, the same way (`dinet.home_crypto`: mode 0600, sealed
with DINET_HOME_PASSPHRASE when that is set).
"""

from __future__ import annotations

from pathlib import Path

from coincurve import PrivateKey

from dinet.errors import ConfigError
from dinet.home_crypto import read_or_create_secret
from dinet.settle._eth import address_of_public_key

CHAIN_KEY = "chain.key"
_KEY_SIZE = 32
# The order of secp256k1's group: a private key is an integer in [1, N).
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class ChainKey:
    """A secp256k1 private key and its EIP-55 address."""

    __slots__ = ("_key", "address", "private_key")

    def __init__(self, private_key: bytes) -> None:
        if len(private_key) != _KEY_SIZE or not 0 < int.from_bytes(private_key, "big") < _N:
            raise ValueError("a secp256k1 private key is 32 bytes, an integer in [1, N)")
        self.private_key = bytes(private_key)
        self._key = PrivateKey(self.private_key)
        self.address = address_of_public_key(self._key.public_key.format(compressed=False))

    @classmethod
    def generate(cls) -> ChainKey:
        return cls(PrivateKey().secret)

    @classmethod
    def from_hex(cls, hex_key: str) -> ChainKey:
        """From 64 hex digits, with or without 0x."""
        digits = hex_key[2:] if hex_key.startswith(("0x", "0X")) else hex_key
        if len(digits) != 2 * _KEY_SIZE:
            raise ValueError("a private key is 64 hex digits")
        return cls(bytes.fromhex(digits))

    @property
    def hex(self) -> str:
        return "0x" + self.private_key.hex()

    def sign_digest(self, digest: bytes) -> bytes:
        """A 65-byte recoverable signature r || s || recovery id (0 or 1) of a 32-byte
        digest; libsecp256k1 always gives the low-s form."""
        return self._key.sign_recoverable(digest, hasher=None)

    def __repr__(self) -> str:  # never the private key
        return f"ChainKey({self.address})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChainKey) and other.private_key == self.private_key

    def __hash__(self) -> int:
        return hash(self.address)


def load_or_create_chain_key(home: Path, name: str = CHAIN_KEY) -> ChainKey:
    """The key stored as `home/name` (its 32 bytes), created (mode 0600) on first use;
    encrypted at rest when DINET_HOME_PASSPHRASE is set (`dinet.home_crypto`)."""
    path = home / name

    def is_a_key(secret: bytes) -> None:
        if len(secret) != _KEY_SIZE or not 0 < int.from_bytes(secret, "big") < _N:
            raise ConfigError(f"{path} is not a secp256k1 chain key ({len(secret)} bytes, expected 32)")

    return ChainKey(read_or_create_secret(path, is_a_key, lambda: ChainKey.generate().private_key))
