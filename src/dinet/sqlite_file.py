"""Opening one of dinet's SQLite files (the ledger, the reputation book) the same way."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

from dinet.home_crypto import home_passphrase, is_sealed_file, missing_passphrase
from dinet.sealed_sqlite import open_sealed


def open_versioned(
    path: Path, schema: str, version: int, *, synchronous: Literal["NORMAL", "FULL"]
) -> sqlite3.Connection:
    """`path` in WAL mode with `schema` applied and `version` recorded; autocommit (callers
    open their own transactions), shareable between threads under the caller's lock.

    With DINET_HOME_PASSPHRASE set the file is kept encrypted (`dinet.sealed_sqlite`: the
    same guarantees; FULL then also syncs the directory at each commit).
    Raises sqlite3.DatabaseError if the file is not a database, or if a newer dinet wrote it;
    ConfigError for an encrypted file without the passphrase, or with a wrong one.
    """
    passphrase = home_passphrase()
    if passphrase is not None:
        return open_sealed(
            path, passphrase, durable=synchronous == "FULL", prepare=lambda db: _prepare(db, schema, version)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        _prepare(db, schema, version)
    except sqlite3.DatabaseError:
        db.close()
        # Only now look at the file's first bytes: opening and closing a file that this
        # process also holds through SQLite would drop the process's POSIX locks on it, and
        # another process closing the database would then delete the WAL from under us.
        if is_sealed_file(path):
            raise missing_passphrase(path) from None
        raise
    except BaseException:
        db.close()
        raise
    return db


def _prepare(db: sqlite3.Connection, schema: str, version: int) -> None:
    found = db.execute("PRAGMA user_version").fetchone()[0]
    if found > version:
        raise sqlite3.DatabaseError(f"written by a newer dinet (schema {found})")
    db.executescript(schema)
    if found != version:  # an unchanged file stays byte for byte (a sealed one is not rewritten)
        db.execute(f"PRAGMA user_version={version}")
