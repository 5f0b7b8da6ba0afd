"""The reputation file: an event log and the standing each event left, in SQLite.

Each event row keeps the peer's standing right after it, and `standings` holds the
latest one per peer, both written in one transaction. A crash (kill -9 included)
leaves either the whole event or none of it, so the file can always be checked
against itself: every standing must follow from the one before by the formula
(`check`). WAL mode; `synchronous=NORMAL`, so a power cut may lose the last few
events but never leaves them half-written (a lost event costs a peer little; a
receipt, in the ledger, is money and uses FULL).

Events older than `RETENTION_S` are pruned, except each peer's latest: the check
then starts from the oldest event kept.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dinet.errors import ReputationError
from dinet.sqlite_file import open_versioned
from dinet.wire.ids import PeerId

SCHEMA_VERSION = 1
RETENTION_S = 30 * 86400.0
MAX_PEER_ID = 128
PRUNE_EVERY = 1000  # events between prunes

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    peer_id     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    at          REAL NOT NULL,
    half_life_s REAL NOT NULL CHECK (half_life_s > 0),  -- how the standing before it decayed
    good        REAL NOT NULL CHECK (good >= 0),        -- the standing after this event
    bad         REAL NOT NULL CHECK (bad >= 0),
    events      REAL NOT NULL CHECK (events >= 0)
);
CREATE INDEX IF NOT EXISTS events_peer ON events (peer_id, id);
CREATE TABLE IF NOT EXISTS standings (
    peer_id     TEXT PRIMARY KEY,
    good        REAL NOT NULL CHECK (good >= 0),
    bad         REAL NOT NULL CHECK (bad >= 0),
    events      REAL NOT NULL CHECK (events >= 0),
    at          REAL NOT NULL,
    last_event  INTEGER NOT NULL REFERENCES events (id)
);
"""


@dataclass(frozen=True)
class Row:
    """A stored standing: decayed sums as of `at` (wall-clock seconds)."""

    peer_id: PeerId
    good: float
    bad: float
    events: float
    at: float


# (standing before or None, peer id, event kind, time, half-life) -> standing after
Advance = Callable[[Row | None, PeerId, str, float, float], Row]


class Store:
    """One reputation file. Safe to share between threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._since_prune = 0
        try:
            self._db = open_versioned(path, _SCHEMA, SCHEMA_VERSION, synchronous="NORMAL")
        except sqlite3.DatabaseError as exc:
            raise ReputationError(f"cannot open the reputation file {path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def standings(self) -> list[Row]:
        with self._lock:
            try:
                rows = self._db.execute("SELECT peer_id, good, bad, events, at FROM standings").fetchall()
            except sqlite3.DatabaseError as exc:
                raise ReputationError(f"cannot read {self.path}: {exc}") from None
        return [Row(*r) for r in rows]

    def apply(
        self, items: list[tuple[PeerId, str]], at: float, half_life_s: float, advance: Advance
    ) -> list[Row]:
        """Log each (peer, kind) event and move the peer's standing, all in one transaction."""
        for peer_id, _ in items:
            if not peer_id or len(peer_id) > MAX_PEER_ID:
                raise ReputationError(f"not a peer id: {peer_id[:MAX_PEER_ID]!r}")
        if not math.isfinite(at):
            raise ReputationError("an event needs a finite time")
        after: list[Row] = []
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for peer_id, kind in items:
                        found = self._db.execute(
                            "SELECT peer_id, good, bad, events, at FROM standings WHERE peer_id = ?",
                            (peer_id,),
                        ).fetchone()
                        row = advance(None if found is None else Row(*found), peer_id, kind, at, half_life_s)
                        event_id = self._db.execute(
                            "INSERT INTO events (peer_id, kind, at, half_life_s, good, bad, events) "
                            "VALUES (?,?,?,?,?,?,?)",
                            (peer_id, kind, row.at, half_life_s, row.good, row.bad, row.events),
                        ).lastrowid
                        self._db.execute(
                            "INSERT OR REPLACE INTO standings VALUES (?,?,?,?,?,?)",
                            (peer_id, row.good, row.bad, row.events, row.at, event_id),
                        )
                        after.append(row)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                raise ReputationError(f"cannot write {self.path}: {exc}") from None
            self._since_prune += len(items)
            if self._since_prune >= PRUNE_EVERY:
                self._since_prune = 0
                self._prune(at - RETENTION_S)
        return after

    def _prune(self, before: float) -> None:
        try:
            self._db.execute(
                "DELETE FROM events WHERE at < ? AND id NOT IN (SELECT last_event FROM standings)", (before,)
            )
        except sqlite3.DatabaseError as exc:
            raise ReputationError(f"cannot prune {self.path}: {exc}") from None

    def check(self, advance: Advance) -> list[str]:
        """Re-derive each peer's chain of standings from its events; list what disagrees."""
        with self._lock:
            try:
                problems = [
                    f"sqlite: {r[0]}" for r in self._db.execute("PRAGMA integrity_check") if r[0] != "ok"
                ]
                events = self._db.execute(
                    "SELECT id, peer_id, kind, at, half_life_s, good, bad, events FROM events ORDER BY id"
                ).fetchall()
                latest = {
                    r[0]: r[1:]
                    for r in self._db.execute(
                        "SELECT peer_id, good, bad, events, at, last_event FROM standings"
                    )
                }
            except sqlite3.DatabaseError as exc:
                return [f"the file cannot be read: {exc}"]
        last: dict[str, tuple[int, Row]] = {}
        for event_id, peer_id, kind, at, half_life_s, good, bad, count in events:
            stored = Row(peer_id, good, bad, count, at)
            before = last.get(peer_id)
            if before is not None:  # the oldest kept event of a peer is taken as given
                try:
                    expected = advance(before[1], peer_id, kind, at, half_life_s)
                except ValueError:
                    problems.append(f"event {event_id}: unknown kind {kind!r}")
                    expected = stored
                if not _same(expected, stored):
                    problems.append(
                        f"event {event_id} of {peer_id}: its standing does not follow from the one before"
                    )
            last[peer_id] = (event_id, stored)
        for peer_id, (good, bad, count, at, last_event) in latest.items():
            tail, stored = last.get(peer_id), Row(peer_id, good, bad, count, at)
            if tail is None or tail[0] != last_event or not _same(tail[1], stored):
                problems.append(f"the standing of {peer_id} is not the one its latest event left")
        problems.extend(f"events of {p} but no standing" for p in last.keys() - latest.keys())
        return problems


def _same(a: Row, b: Row) -> bool:
    return all(
        math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
        for x, y in ((a.good, b.good), (a.bad, b.bad), (a.events, b.events), (a.at, b.at))
    )
