"""Opening one of dinet's SQLite files (the ledger, the reputation book) the same way."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal


def open_versioned(
    path: Path, schema: str, version: int, *, synchronous: Literal["NORMAL", "FULL"]
) -> sqlite3.Connection:
    """`path` in WAL mode with `schema` applied and `version` recorded; autocommit (callers
    open their own transactions), shareable between threads under the caller's lock.

    Raises sqlite3.DatabaseError if the file is not a database, or if a newer dinet wrote it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        found = db.execute("PRAGMA user_version").fetchone()[0]
        if found > version:
            raise sqlite3.DatabaseError(f"written by a newer dinet (schema {found})")
        db.executescript(schema)
        db.execute(f"PRAGMA user_version={version}")
    except BaseException:
        db.close()
        raise
    return db
