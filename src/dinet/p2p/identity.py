"""A node's ed25519 identity, kept in its home directory so its peer id survives restarts."""

from __future__ import annotations

import os
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

from dinet.errors import ConfigError

NODE_IDENTITY = "identity.key"
CLIENT_IDENTITY = "client.key"  # separate, so a client and a node may share a home
_SEED_SIZE = 32


def load_or_create_identity(home: Path, name: str = NODE_IDENTITY) -> KeyPair:
    """The key pair stored as `home/name`, created (mode 0600) on first use."""
    path = home / name
    if path.exists():
        seed = path.read_bytes()
        if len(seed) != _SEED_SIZE:
            raise ConfigError(f"{path} is not a dinet identity ({len(seed)} bytes, expected 32)")
        return create_new_key_pair(seed)
    home.mkdir(parents=True, exist_ok=True)
    seed = os.urandom(_SEED_SIZE)
    # Write the seed where no other user can read it, then move it into place.
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(seed)
    os.replace(tmp, path)
    return create_new_key_pair(seed)


def peer_id_of(key_pair: KeyPair) -> str:
    return ID.from_pubkey(key_pair.public_key).to_base58()
