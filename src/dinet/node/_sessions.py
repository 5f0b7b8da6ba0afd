"""The sessions a stage holds: KV caches bounded in total bytes and in idle time.

When the caches together pass `max_bytes`, the least recently used idle sessions are
evicted (never one that is mid-step); a session unused for `idle_s` is evicted too.
An evicted session's next step is answered `unknown_session`, and the client replays
its recorded steps into a fresh one. Pure bookkeeping, no I/O: times are passed in.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

logger = logging.getLogger(__name__)

_FORGET_AFTER = 1024  # evicted ids remembered, for a clearer error message


class HasBytes(Protocol):
    @property
    def nbytes(self) -> int: ...


S = TypeVar("S", bound=HasBytes)


@dataclass
class _Entry(Generic[S]):
    session: S
    used_at: float
    busy: bool = False
    nbytes: int = 0


class SessionTable(Generic[S]):
    def __init__(self, max_bytes: int, idle_s: float) -> None:
        self.max_bytes = max_bytes
        self.idle_s = idle_s
        self._entries: OrderedDict[str, _Entry[S]] = OrderedDict()  # least recently used first
        self._evicted: OrderedDict[str, str] = OrderedDict()  # id -> why

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._entries

    @property
    def total_bytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def add(self, session_id: str, session: S, now: float) -> None:
        self.remove(session_id)
        self._entries[session_id] = _Entry(session, now, nbytes=session.nbytes)
        self._evicted.pop(session_id, None)

    def why_missing(self, session_id: str) -> str:
        why = self._evicted.get(session_id)
        return f"session {session_id} was evicted ({why})" if why else f"no session {session_id} here"

    def begin(self, session_id: str, now: float) -> S | None:
        """The session, marked busy (not evictable) until `end`; None if it is gone."""
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        entry.busy, entry.used_at = True, now
        self._entries.move_to_end(session_id)
        return entry.session

    def end(self, session_id: str, now: float) -> list[str]:
        """The step is over: account its new size, evict others if over budget."""
        entry = self._entries.get(session_id)
        if entry is not None:
            entry.busy, entry.used_at = False, now
            entry.nbytes = entry.session.nbytes
        return self._shrink(keep=session_id)

    def remove(self, session_id: str) -> None:
        self._entries.pop(session_id, None)

    def expire(self, now: float) -> list[str]:
        """Evict sessions idle for longer than `idle_s`."""
        stale = [sid for sid, e in self._entries.items() if not e.busy and now - e.used_at > self.idle_s]
        for sid in stale:
            self._evict(sid, f"idle for more than {self.idle_s:g} s")
        return stale

    def _shrink(self, keep: str) -> list[str]:
        evicted: list[str] = []
        total = self.total_bytes
        for sid, entry in list(self._entries.items()):
            if total <= self.max_bytes:
                break
            if entry.busy or sid == keep:
                continue
            total -= entry.nbytes
            self._evict(sid, f"the stage's KV caches passed {self.max_bytes} bytes")
            evicted.append(sid)
        return evicted

    def _evict(self, session_id: str, why: str) -> None:
        self._entries.pop(session_id, None)
        self._evicted[session_id] = why
        while len(self._evicted) > _FORGET_AFTER:
            self._evicted.popitem(last=False)
        logger.info("evicted session %s: %s", session_id, why)
