"""A SQLite file kept encrypted at rest (`dinet.home_crypto`): the database lives in memory,
and every commit writes it whole, sealed, in one atomic rename.

What the plain file gives the ledger and the reputation book, this keeps:
- a commit survives kill -9 once it returns (and a power cut, with `durable`); a crash
  mid-write leaves the previous commit whole (the rename is atomic, the new bytes are
  synced before it);
- several processes may share the file (a node and `din ask` in one home): a write
  transaction holds an exclusive lock on `<file>.lock` from its first statement to its end,
  and every statement begun outside a transaction first reloads the file if another process
  replaced it (each write has its own random nonce, so one read of the header tells).
What it costs: each commit writes the whole database (`bench/sealed_ledger.py` measures it).

Only the statements the stores use pass through here: execute, executemany, executescript
on the connection itself (not cursors opened from it).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dinet.home_crypto import (
    HEADER_SIZE,
    PASSPHRASE_ENV,
    check_home,
    is_sealed,
    nonce_of,
    salt_of,
    seal,
    unseal,
    write_atomically,
)

logger = logging.getLogger(__name__)

_SIDECARS = ("-wal", "-shm", "-journal")  # a plaintext SQLite's companions, gone once sealed


class SealedConnection(sqlite3.Connection):
    """An in-memory SQLite connection mirrored, sealed, to a file at each commit."""

    _path: Path
    _passphrase: bytes
    _durable: bool
    _salt: bytes | None
    _seen: bytes | None  # the nonce of the file's version loaded or written last
    _saved_changes: int
    _lock_fd: int
    _locked: bool
    _opening: bool  # open_sealed holds the lock and saves once, itself

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        with self._turn():
            return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        with self._turn():
            return super().executemany(sql, parameters)

    def executescript(self, script: str, /) -> sqlite3.Cursor:
        with self._turn():
            return super().executescript(script)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the lock too
                self._lock_fd = -1

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """Around one statement: take the lock and catch up with the file before a statement
        begun outside a transaction; write the file and let go once no transaction is open."""
        if self._opening:
            yield
            return
        if not self.in_transaction:
            self._lock()
            try:
                self._reload_if_replaced()
            except BaseException:
                self._unlock()
                raise
        try:
            yield
        finally:
            if not self.in_transaction and self._locked:
                try:
                    if self.total_changes != self._saved_changes:
                        self._save()
                finally:
                    self._unlock()

    def _lock(self) -> None:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # blocks while another writer commits
        self._locked = True

    def _unlock(self) -> None:
        self._locked = False
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _reload_if_replaced(self) -> None:
        try:
            with self._path.open("rb") as f:
                header = f.read(HEADER_SIZE)
                if not is_sealed(header) or nonce_of(header) == self._seen:
                    return
                data = header + f.read()
        except FileNotFoundError:
            return
        self._load(data)

    def _load(self, data: bytes) -> None:
        self.deserialize(unseal(data, self._passphrase, self._path))
        self._salt, self._seen = salt_of(data), nonce_of(data)
        self._saved_changes = self.total_changes

    def _save(self) -> None:
        sealed = seal(self.serialize(), self._passphrase, self._salt)
        try:
            write_atomically(self._path, sealed, durable=self._durable)
        except OSError as exc:
            # The commit is in memory only: forget it, so memory and file agree again.
            self._seen = None
            self._reload_if_replaced()
            raise sqlite3.OperationalError(f"cannot write the encrypted file: {exc}") from None
        self._salt, self._seen = salt_of(sealed), nonce_of(sealed)
        self._saved_changes = self.total_changes


def open_sealed(
    path: Path, passphrase: bytes, *, durable: bool, prepare: Callable[[sqlite3.Connection], None]
) -> sqlite3.Connection:
    """The sealed database at `path` (created if missing; a plaintext one is sealed in place),
    with `prepare` (schema, version) applied and saved before anyone else may write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False, factory=SealedConnection)
    assert isinstance(db, SealedConnection)
    db._path, db._passphrase, db._durable = path, passphrase, durable
    db._salt = db._seen = None
    db._saved_changes = db.total_changes
    db._lock_fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    db._locked, db._opening = False, True
    try:
        db._lock()
        try:
            data = _read_or_none(path)
            if data is not None and is_sealed(data):
                db._load(data)
                before = db.serialize()
            else:
                if data is not None:
                    db.deserialize(_plaintext_database(path))
                check_home(path.parent, passphrase)
                before = None
            prepare(db)
            if before is None or db.serialize() != before:
                db._save()
            if data is not None and not is_sealed(data):
                logger.warning("encrypted %s in place (it was plaintext; %s is set)", path, PASSPHRASE_ENV)
            for suffix in _SIDECARS:
                path.with_name(path.name + suffix).unlink(missing_ok=True)
        finally:
            db._opening = False
            db._unlock()
    except BaseException:
        db.close()
        raise
    return db


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _plaintext_database(path: Path) -> bytes:
    """A plain SQLite file's contents, its write-ahead log included, as a rollback-journal
    database: an image marked WAL (header bytes 18-19 = 2) cannot be opened in memory."""
    plain = sqlite3.connect(path)
    try:
        plain.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        image = bytearray(plain.serialize())
    finally:
        plain.close()
    image[18:20] = b"\x01\x01"
    return bytes(image)
