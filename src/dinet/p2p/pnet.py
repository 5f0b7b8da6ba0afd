"""Private swarms: libp2p's pre-shared key layer (pnet, "PSK v1"), as every libp2p speaks it.

A swarm key is 32 secret bytes in a `swarm.key` file (the format go-libp2p, js-libp2p and
rust-libp2p read). Every connection of a host that holds one starts with a random 24-byte
nonce each way; everything after it is XOR-ed with XSalsa20(key, nonce), below the
security handshake. A peer without the same key sees noise and is seen as noise: it never
reaches Noise, let alone a dinet protocol.

py-libp2p 0.8.1's own pnet is not used: it runs Salsa20 with an 8-byte nonce (other
libp2p implementations cannot join), leaves relayed connections unprotected on the
dialing side and protects hole-punched ones twice. `GuardedConnection` is applied once
per connection, in `dinet.p2p.gate`, whatever the transport or the direction.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from Crypto.Cipher import Salsa20
from libp2p.abc import ConnectionType, IRawConnection
from libp2p.io.exceptions import IOException
from multiaddr import Multiaddr

from dinet.errors import ConfigError

logger = logging.getLogger(__name__)

SWARM_KEY_CODEC = "/key/swarm/psk/1.0.0/"
KEY_SIZE = 32
NONCE_SIZE = 24
# Every libp2p connection opens, in both directions, with multistream-select's header,
# right after the pnet nonce. Anything else first means the other side holds another
# key (or none): checked byte by byte, so a stranger is told at once, not after a timeout.
FIRST_BYTES = b"\x13/multistream/1.0.0\n"


@dataclass(frozen=True, repr=False)
class SwarmKey:
    """A private swarm's pre-shared key."""

    secret: bytes
    source: str = "?"  # the file it came from, for messages

    @property
    def fingerprint(self) -> str:
        """A short public name for the key (a hash of it), so operators can compare keys in logs."""
        return hashlib.sha256(b"dinet swarm key fingerprint\0" + self.secret).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"SwarmKey({self.fingerprint})"  # never the secret


def read_swarm_key(path: Path) -> SwarmKey:
    """The key in a `swarm.key` file (/base16/, /base64/ or /bin/); ConfigError saying what is wrong."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the swarm key {path}: {exc.strerror or exc}") from None
    codec, _, rest = data.partition(b"\n")
    if codec.strip() != SWARM_KEY_CODEC.encode():
        raise ConfigError(f"{path} is not a swarm key: its first line must be {SWARM_KEY_CODEC}")
    encoding, _, body = rest.partition(b"\n")
    try:
        secret = _decode(encoding.strip().decode("ascii", "replace"), body)
    except ValueError as exc:
        raise ConfigError(f"swarm key {path}: {exc}") from None
    if os.stat(path).st_mode & 0o077:
        logger.warning("swarm key %s can be read by other users of this machine (chmod 600 it)", path)
    return SwarmKey(secret, str(path))


def _decode(encoding: str, body: bytes) -> bytes:
    if encoding == "/base16/":
        text = body.strip()
        if len(text) != 2 * KEY_SIZE:
            raise ValueError(f"the key must be {2 * KEY_SIZE} hex digits, not {len(text)} characters")
        try:
            return binascii.unhexlify(text)
        except binascii.Error:
            raise ValueError("the key is not hex digits (0-9, a-f)") from None
    if encoding == "/base64/":
        try:
            secret = base64.b64decode(body.strip(), validate=True)
        except binascii.Error:
            raise ValueError("the key is not valid base64") from None
    elif encoding == "/bin/":
        secret = body
    else:
        raise ValueError(f"unknown encoding {encoding!r} on line 2 (expected /base16/, /base64/ or /bin/)")
    if len(secret) != KEY_SIZE:
        raise ValueError(f"the key must be {KEY_SIZE} bytes, not {len(secret)}")
    return secret


def write_new_swarm_key(path: Path) -> SwarmKey:
    """A fresh random key written to `path` (mode 0600, /base16/); ConfigError if `path` exists."""
    secret = os.urandom(KEY_SIZE)
    text = f"{SWARM_KEY_CODEC}\n/base16/\n{secret.hex()}\n"
    try:
        # O_EXCL: an existing key is never replaced, even by a race with another writer.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} already exists: refusing to overwrite a file (delete it first)") from None
    except OSError as exc:
        raise ConfigError(f"cannot write the swarm key {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return SwarmKey(secret, str(path))


class NotInSwarm(Exception):
    """The other side of a connection is not in our swarm (its first bytes are not libp2p's)."""


class GuardedConnection(IRawConnection):
    """A raw connection behind the pnet layer when `key` is given; with or without one, its
    first bytes in must be multistream-select's header (`FIRST_BYTES`), or NotInSwarm.
    """

    def __init__(self, inner: IRawConnection, key: SwarmKey | None) -> None:
        self._inner = inner
        self._key = key
        self.is_initiator = inner.is_initiator
        self._encrypt: _XSalsa20 | None = None
        self._decrypt: _XSalsa20 | None = None
        self._checked = 0  # how many of FIRST_BYTES have arrived and matched
        self.stranger: str | None = None  # why the other side is not one of us, once found

    async def write(self, data: bytes) -> None:
        if self._key is None:
            await self._inner.write(data)
        elif self._encrypt is None:
            nonce = os.urandom(NONCE_SIZE)
            self._encrypt = _XSalsa20(self._key.secret, nonce)
            await self._inner.write(nonce + self._encrypt.apply(data))
        else:
            await self._inner.write(self._encrypt.apply(data))

    async def read(self, n: int | None = None) -> bytes:
        if self._key is not None and self._decrypt is None:
            self._decrypt = _XSalsa20(self._key.secret, await self._read_nonce())
        data = await self._inner.read(n)
        if self._decrypt is not None:
            data = self._decrypt.apply(data)
        if self._checked < len(FIRST_BYTES) and data:
            expected = FIRST_BYTES[self._checked : self._checked + len(data)]
            if data[: len(expected)] != expected:
                self.stranger = self._stranger()
                raise NotInSwarm(self.stranger)
            self._checked += len(expected)
        return data

    async def _read_nonce(self) -> bytes:
        nonce = b""
        while len(nonce) < NONCE_SIZE:
            try:
                more = await self._inner.read(NONCE_SIZE - len(nonce))
            except (IOException, OSError):  # reset by a peer that found our bytes foreign
                more = b""
            if not more:
                self.stranger = f"{self._who()} hung up before the private swarm's nonce: not in this swarm"
                raise NotInSwarm(self.stranger)
            nonce += more
        return nonce

    def _stranger(self) -> str:
        if self._key is None:
            return (
                f"{self._who()} does not speak libp2p in the clear: it may belong to a private "
                "swarm, which answers only holders of its swarm key (--swarm-key)"
            )
        return f"{self._who()} is not in this private swarm (it holds another swarm key, or none)"

    def _who(self) -> str:
        remote = self._inner.get_remote_address()
        return "the peer" if remote is None else f"the peer at {remote[0]}:{remote[1]}"

    async def close(self) -> None:
        await self._inner.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self._inner.get_remote_address()

    def get_transport_addresses(self) -> list[Multiaddr]:
        return self._inner.get_transport_addresses()

    def get_connection_type(self) -> ConnectionType:
        return self._inner.get_connection_type()


class _XSalsa20:
    """The XSalsa20 key stream (Bernstein, "Extending the Salsa20 nonce", 2008): Salsa20
    under the subkey HSalsa20(key, nonce[:16]), with nonce[16:] as its 8-byte nonce.

    The bulk cipher is pycryptodome's Salsa20 (a py-libp2p dependency); only HSalsa20, run
    once per connection and direction, is here. tests/p2p/test_pnet.py checks the stream
    against libsodium's (PyNaCl's secretbox).
    """

    def __init__(self, key: bytes, nonce: bytes) -> None:
        self._cipher = Salsa20.new(key=_hsalsa20(key, nonce[:16]), nonce=nonce[16:])

    def apply(self, data: bytes) -> bytes:
        return self._cipher.encrypt(data)


def _hsalsa20(key: bytes, nonce: bytes) -> bytes:
    """HSalsa20: Salsa20's 20 rounds over (constants, key, 16-byte nonce), without the final
    addition; words 0, 5, 10, 15, 6, 7, 8, 9 of the result are the 32-byte subkey."""
    k = struct.unpack("<8I", key)
    n = struct.unpack("<4I", nonce)
    c = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"
    x = [c[0], *k[:4], c[1], *n, c[2], *k[4:], c[3]]
    for _ in range(10):  # 10 double rounds: columns, then rows
        for a, b, cc, d in _DOUBLE_ROUND:
            x[b] ^= _rotl((x[a] + x[d]) & _MASK, 7)
            x[cc] ^= _rotl((x[b] + x[a]) & _MASK, 9)
            x[d] ^= _rotl((x[cc] + x[b]) & _MASK, 13)
            x[a] ^= _rotl((x[d] + x[cc]) & _MASK, 18)
    return struct.pack("<8I", *(x[i] for i in (0, 5, 10, 15, 6, 7, 8, 9)))


_MASK = 0xFFFFFFFF
_DOUBLE_ROUND = (
    (0, 4, 8, 12), (5, 9, 13, 1), (10, 14, 2, 6), (15, 3, 7, 11),  # columns
    (0, 1, 2, 3), (5, 6, 7, 4), (10, 11, 8, 9), (15, 12, 13, 14),  # rows
)  # fmt: skip


def _rotl(v: int, shift: int) -> int:
    return ((v << shift) | (v >> (32 - shift))) & _MASK
