"""A node's ed25519 identity, kept in its home directory so its peer id survives restarts."""

from __future__ import annotations

from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair

from dinet.errors import ConfigError
from dinet.home_crypto import read_or_create_secret
from dinet.wire.ids import PeerId
from dinet.wire.keys import SEED_SIZE, SigningKey

NODE_IDENTITY = "identity.key"
CLIENT_IDENTITY = "client.key"  # separate, so a client and a node may share a home


def load_or_create_identity(home: Path, name: str = NODE_IDENTITY) -> SigningKey:
    """The key stored as `home/name` (its 32-byte seed), created (mode 0600) on first use;
    encrypted at rest when DINET_HOME_PASSPHRASE is set (`dinet.home_crypto`)."""
    path = home / name

    def is_a_seed(seed: bytes) -> None:
        if len(seed) != SEED_SIZE:
            raise ConfigError(f"{path} is not a dinet identity ({len(seed)} bytes, expected 32)")

    return SigningKey(read_or_create_secret(path, is_a_seed, lambda: SigningKey.generate().seed))


def peer_id_of(key: SigningKey) -> PeerId:
    return key.peer_id


def libp2p_key_pair(key: SigningKey) -> KeyPair:
    """The same key as py-libp2p's type, for its host and Noise handshake."""
    return create_new_key_pair(key.seed)
