"""Per-peer reputation: what this client has seen each peer do, decaying over time.

Every observation is an `Event` with a weight of good and bad evidence. A peer's
standing keeps the sums of those weights, each halved every `half_life_s` since it
was recorded, and the number of events behind them (decayed alike):

    G, B, N   decayed good weight, bad weight, event count
    score   = (G + PRIOR) / (G + B + PRIOR)          PRIOR = 2

An unknown peer has no score (`None`: the router treats it as fully trusted, the
same as a peer that only ever did well). Good evidence only dilutes bad evidence,
so serving answers cannot buy back a lie forever: a liar caught on every answer it
also completes tends to 1 / (1 + 8) ~ 0.11. Slowness alone (0.25 per answer, each
also a success) can never bring a score below 0.8. The router excludes a peer once
N >= 3.5 and score < 0.35 (`dinet.routing.select.trusted`); see docs/trust.md.

The store is SQLite in the client's home (`_store.py`); reads come from memory.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from dinet.errors import ReputationError
from dinet.trust._store import Row, Store
from dinet.trust.outcomes import VerificationOutcome
from dinet.wire.ids import PeerId

logger = logging.getLogger(__name__)

REPUTATION_FILE = "reputation.sqlite"
HALF_LIFE_S = 6 * 3600.0
PRIOR = 2.0


class Event(StrEnum):
    """What a peer did, as this client saw it."""

    SUCCESS = "success"  # a complete answer with a valid end frame
    FAILURE = "failure"  # stream broke, stalled, error frame (not busy), bad frame or receipt
    SLOW = "slow"  # far slower than it advertises (decode speed or time to first token)
    VERIFY_PASS = "verify_pass"  # its answer passed re-scoring by another peer
    VERIFY_FAIL = "verify_fail"  # its answer failed re-scoring
    VOTE_AGREE = "vote_agree"  # its answer was the majority's
    VOTE_DISSENT = "vote_dissent"  # its answer differed from the majority's
    OVERRULED = "overruled"  # as a verifier, its verdict lost to the majority of verifiers


# (good, bad) evidence per event. Lies weigh far more than lapses: availability is
# also handled by back-off, honesty only here.
WEIGHTS: dict[Event, tuple[float, float]] = {
    Event.SUCCESS: (1.0, 0.0),
    Event.FAILURE: (0.0, 0.5),
    Event.SLOW: (0.0, 0.25),
    Event.VERIFY_PASS: (1.0, 0.0),
    Event.VERIFY_FAIL: (0.0, 8.0),
    Event.VOTE_AGREE: (1.0, 0.0),
    Event.VOTE_DISSENT: (0.0, 8.0),
    Event.OVERRULED: (0.0, 8.0),  # a verifier covering for a liar is a liar
}


@dataclass(frozen=True)
class Standing:
    """One peer's evidence, decayed to `at` (wall-clock seconds)."""

    peer_id: PeerId
    good: float
    bad: float
    events: float
    at: float

    @property
    def score(self) -> float:
        return (self.good + PRIOR) / (self.good + self.bad + PRIOR)

    def decayed(self, now: float, half_life_s: float) -> Standing:
        factor = decay_factor(now - self.at, half_life_s)
        return Standing(
            self.peer_id, self.good * factor, self.bad * factor, self.events * factor, max(now, self.at)
        )

    def after(self, event: Event, now: float, half_life_s: float) -> Standing:
        """This standing once `event` is added at `now`."""
        base = self.decayed(now, half_life_s)
        good, bad = WEIGHTS[event]
        return Standing(self.peer_id, base.good + good, base.bad + bad, base.events + 1.0, base.at)


# Probation: a peer without standing has every answer checked (by two verifiers).
PROBATION_GOOD = 10.0  # decayed good evidence for standing: ~5 verified answers (success + pass)
STANDING_SCORE = 0.8  # ... with a score at least this (one caught lie in the last ~10 loses it)


def has_standing(standing: Standing | None, good_needed: float = PROBATION_GOOD) -> bool:
    """Whether a peer is past probation: at least `good_needed` decayed good evidence and
    a score of at least `STANDING_SCORE`. A peer never seen has none; with `good_needed`
    0 every peer has standing (no probation)."""
    if good_needed <= 0:
        return True
    return standing is not None and standing.good >= good_needed and standing.score >= STANDING_SCORE


# Latency against claims: how much worse than advertised counts as `SLOW`.
SLOW_FACTOR = 3.0
MIN_TOKENS_FOR_SPEED = 16  # fewer tokens say little about decode speed (batches ~40 ms apart)
TTFT_GRACE_MS = 1000.0  # scheduling on a loaded machine, and up to 1 s between queued frames


def slower_than_claimed(
    claimed_tokens_per_s: float,
    claimed_ttft_ms: float,
    *,
    tokens: int,
    observed_tokens_per_s: float | None,
    observed_ttft_ms: float | None,
) -> bool:
    """Whether an answer came far slower than the peer advertises.

    Decode speed counts from `MIN_TOKENS_FOR_SPEED` tokens on; time to first token only
    when it was measured (None when the request waited in the peer's queue or resumed
    another peer's answer, whose replay is not a prefill). A claim of 0 is no claim.
    """
    if (
        claimed_tokens_per_s > 0
        and observed_tokens_per_s is not None
        and tokens >= MIN_TOKENS_FOR_SPEED
        and observed_tokens_per_s * SLOW_FACTOR < claimed_tokens_per_s
    ):
        return True
    return (
        claimed_ttft_ms > 0
        and observed_ttft_ms is not None
        and observed_ttft_ms > SLOW_FACTOR * claimed_ttft_ms + TTFT_GRACE_MS
    )


def decay_factor(elapsed_s: float, half_life_s: float) -> float:
    """0.5 per half-life; a clock that went backwards decays nothing."""
    return math.pow(0.5, max(0.0, elapsed_s) / half_life_s)


def fresh(peer_id: PeerId, now: float) -> Standing:
    return Standing(peer_id, 0.0, 0.0, 0.0, now)


class Reputation:
    """This client's reputation book: `record` events, read `score` and `standing`.

    Writes are transactional (one SQLite transaction per call of `record` or
    `record_many`) and block for a few milliseconds: from trio, call them through
    `trio.to_thread.run_sync`. Reads are from memory and never block; `refresh`
    reloads what other processes sharing the home have written since.
    """

    def __init__(self, path: Path, half_life_s: float = HALF_LIFE_S) -> None:
        if half_life_s <= 0:
            raise ValueError("the half-life must be positive")
        self.half_life_s = half_life_s
        self._store = Store(path)
        self._cache: dict[PeerId, Standing] = {}
        self.refresh()

    @classmethod
    def in_home(cls, home: Path, half_life_s: float = HALF_LIFE_S) -> Reputation:
        return cls(home / REPUTATION_FILE, half_life_s)

    @property
    def path(self) -> Path:
        return self._store.path

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Reputation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def refresh(self) -> None:
        self._cache = {r.peer_id: _standing(r) for r in self._store.standings()}

    def record(self, peer_id: PeerId, event: Event, *, now: float | None = None) -> Standing:
        """Add one event to the peer's standing; returns the new standing."""
        return self.record_many([(peer_id, event)], now=now)[0]

    def record_many(
        self, events: Iterable[tuple[PeerId, Event]], *, now: float | None = None
    ) -> list[Standing]:
        """Add several events in one transaction: all of them or (on error) none."""
        at = time.time() if now is None else now
        items = [(peer_id, Event(event).value) for peer_id, event in events]
        rows = self._store.apply(items, at, self.half_life_s, _advance)
        standings = [_standing(r) for r in rows]
        for s in standings:
            self._cache[s.peer_id] = s
        return standings

    def standing(self, peer_id: PeerId, *, now: float | None = None) -> Standing | None:
        """The peer's standing decayed to `now`, or None if it has no recorded event."""
        known = self._cache.get(peer_id)
        if known is None:
            return None
        return known.decayed(time.time() if now is None else now, self.half_life_s)

    def score(self, peer_id: PeerId, *, now: float | None = None) -> float | None:
        """0 (caught lying every time) .. 1 (nothing bad seen); None if never seen."""
        known = self.standing(peer_id, now=now)
        return None if known is None else known.score

    def standings(self, *, now: float | None = None) -> dict[PeerId, Standing]:
        at = time.time() if now is None else now
        return {p: s.decayed(at, self.half_life_s) for p, s in self._cache.items()}

    def record_outcome(self, peer_id: PeerId, event: VerificationOutcome) -> None:
        """`OutcomeRecorder`: a verified answer's outcome for one peer that produced it.

        Called from the event loop: one short write. A file that cannot be written
        costs the event, never the answer.
        """
        try:
            self.record(peer_id, Event.VERIFY_PASS if event.passed else Event.VERIFY_FAIL)
        except ReputationError as exc:
            logger.warning("verification outcome of %s not recorded: %s", peer_id, exc)

    def check(self) -> list[str]:
        """Problems found re-deriving every standing from the event log (empty: consistent)."""
        return self._store.check(_advance)


def _standing(row: Row) -> Standing:
    return Standing(row.peer_id, row.good, row.bad, row.events, row.at)


def _advance(row: Row | None, peer_id: PeerId, kind: str, at: float, half_life_s: float) -> Row:
    """The stored row after one event: the one formula, shared by writes and `check`."""
    before = fresh(peer_id, at) if row is None else _standing(row)
    after = before.after(Event(kind), at, half_life_s)
    return Row(peer_id, after.good, after.bad, after.events, after.at)
