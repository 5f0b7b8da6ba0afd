"""A home's secrets encrypted at rest: set DINET_HOME_PASSPHRASE, and the identity keys and
SQLite files in the home are kept sealed.

The passphrase comes from the environment only: never a flag, never the config file, never
a log line. A sealed file is a short header, then AES-256-GCM over the whole plaintext:

    magic "DINETSEALED" | version 1 | scrypt log2(n), r, p (1 byte each) | salt 16 | nonce 12 | ciphertext+tag

The key is scrypt(passphrase, salt); the salt is random per file and kept when the file is
rewritten (so a rewrite costs no key derivation); the nonce is random per write. The header
is authenticated with the ciphertext. A wrong passphrase, or a changed byte, fails the tag:
nothing is written then. Writes go to a temporary file that replaces the old one in one
rename, so a crash leaves the old file or the new one, never a mix.

A plaintext file met with a passphrase set is sealed in place (logged); before any file of a
home is first sealed, the passphrase is checked against the home's `passphrase.check`, so
one home never ends up under two passphrases.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from dinet.errors import ConfigError

logger = logging.getLogger(__name__)

PASSPHRASE_ENV = "DINET_HOME_PASSPHRASE"
CHECK_FILE = "passphrase.check"
MAGIC = b"DINETSEALED"
VERSION = 1
# scrypt with n = 2**15, r = 8 (32 MiB, ~0.1 s here): once per file opened, not per write.
SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P = 15, 8, 1
SALT_SIZE, NONCE_SIZE = 16, 12
_HEADER = struct.Struct(f"<{len(MAGIC)}sBBBB{SALT_SIZE}s{NONCE_SIZE}s")
HEADER_SIZE = _HEADER.size
_CHECK_TEXT = b"dinet home passphrase check"

_keys: dict[tuple[bytes, bytes, int, int, int], bytes] = {}  # (passphrase, salt, n, r, p) -> key
_keys_lock = threading.Lock()


def home_passphrase() -> bytes | None:
    """The passphrase in DINET_HOME_PASSPHRASE, or None when it is not set."""
    value = os.environ.get(PASSPHRASE_ENV)
    if value is None:
        return None
    if not value:
        raise ConfigError(f"{PASSPHRASE_ENV} is set but empty")
    return value.encode("utf-8")


def is_sealed(data: bytes) -> bool:
    return data.startswith(MAGIC)


def is_sealed_file(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return is_sealed(f.read(len(MAGIC)))
    except FileNotFoundError:
        return False


def seal(plaintext: bytes, passphrase: bytes, salt: bytes | None = None) -> bytes:
    """`plaintext` sealed under `passphrase` (with `salt`, or a fresh one)."""
    salt = salt or os.urandom(SALT_SIZE)
    header = _HEADER.pack(MAGIC, VERSION, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P, salt, os.urandom(NONCE_SIZE))
    key = _key(passphrase, salt, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P)
    return header + AESGCM(key).encrypt(header[-NONCE_SIZE:], plaintext, header)


def unseal(data: bytes, passphrase: bytes, path: Path) -> bytes:
    """The plaintext of a sealed file's bytes; ConfigError if the passphrase is wrong."""
    if len(data) < HEADER_SIZE + 16 or not is_sealed(data):
        raise ConfigError(f"{path} is damaged: not a whole encrypted dinet file")
    _, version, log2_n, r, p, salt, nonce = _HEADER.unpack_from(data)
    if version != VERSION or not (10 <= log2_n <= 22 and 1 <= r <= 32 and 1 <= p <= 16):
        raise ConfigError(f"{path} was encrypted by a newer dinet (format {version}) or is damaged")
    key = _key(passphrase, salt, log2_n, r, p)
    try:
        return AESGCM(key).decrypt(nonce, data[HEADER_SIZE:], data[:HEADER_SIZE])
    except InvalidTag:
        raise ConfigError(f"wrong passphrase for {path} (or the file was altered)") from None


def salt_of(data: bytes) -> bytes:
    return _HEADER.unpack_from(data)[5]


def nonce_of(data: bytes) -> bytes:
    """What tells one write of a sealed file from another (random per write)."""
    return _HEADER.unpack_from(data)[6]


def missing_passphrase(path: Path) -> ConfigError:
    return ConfigError(f"{path} is encrypted: set {PASSPHRASE_ENV} to open it")


def check_home(directory: Path, passphrase: bytes) -> None:
    """Before a first file of `directory` is sealed: the passphrase must be the one the
    directory's other sealed files use (kept in CHECK_FILE, written on first use)."""
    check = directory / CHECK_FILE
    try:
        data = check.read_bytes()
    except FileNotFoundError:
        write_atomically(check, seal(_CHECK_TEXT, passphrase), durable=True)
        return
    try:
        unseal(data, passphrase, check)
    except ConfigError:
        raise ConfigError(f"wrong passphrase for {directory} (it does not open {check})") from None


def read_secret(path: Path, validate: Callable[[bytes], None]) -> bytes:
    """A small secret file's plaintext (an identity seed), sealed or not, checked by
    `validate` (which raises); a valid plaintext file is sealed in place when a passphrase
    is set. FileNotFoundError if it does not exist."""
    data = path.read_bytes()
    passphrase = home_passphrase()
    if is_sealed(data):
        if passphrase is None:
            raise missing_passphrase(path)
        data = unseal(data, passphrase, path)
        validate(data)
        return data
    validate(data)
    if passphrase is not None:
        write_secret(path, data)
        logger.warning("encrypted %s in place (it was plaintext; %s is set)", path, PASSPHRASE_ENV)
    return data


def read_or_create_secret(path: Path, validate: Callable[[bytes], None], new: Callable[[], bytes]) -> bytes:
    """`read_secret`, or on first use a `new()` secret written there (`write_secret`)."""
    try:
        return read_secret(path, validate)
    except FileNotFoundError:
        secret = new()
        write_secret(path, secret)  # where no other user can read it, in one rename
        return secret


def write_secret(path: Path, plaintext: bytes) -> None:
    """Write a small secret file (mode 0600, atomically): sealed when a passphrase is set."""
    passphrase = home_passphrase()
    if passphrase is not None:
        check_home(path.parent, passphrase)
        plaintext = seal(plaintext, passphrase)
    write_atomically(path, plaintext, durable=True)


def write_atomically(path: Path, data: bytes, *, durable: bool) -> None:
    """Replace `path` by `data` in one rename (mode 0600). The new bytes reach the disk
    before the rename, so a crash leaves the old file or the new one; `durable` also
    syncs the directory, so the new one survives a power cut once this returns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _key(passphrase: bytes, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    cache_key = (passphrase, salt, log2_n, r, p)
    with _keys_lock:
        key = _keys.get(cache_key)
    if key is None:
        key = Scrypt(salt=salt, length=32, n=2**log2_n, r=r, p=p).derive(passphrase)
        with _keys_lock:
            _keys[cache_key] = key
    return key
