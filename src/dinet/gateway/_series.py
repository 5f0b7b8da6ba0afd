"""The network's last hour as this gateway saw it, for the page's charts.

Requests, errors, completion tokens and time to first token, in fixed-width time
buckets. Pure: every call takes `now` (seconds, the caller's clock), so tests drive it
with a fake one. Memory is bounded: at most `span_s / bucket_s` buckets, each with a
fixed-size histogram of first-token times instead of the samples themselves.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from dinet.wire.ids import PeerId

BUCKET_S = 10.0
SPAN_S = 3600.0

# First-token times go into log-spaced bins, 4 per doubling from 1 ms, so a percentile read
# back is within 10% of the true one; anything past the last bin (~17 min) lands in it.
_TTFT_FLOOR_S = 0.001
_BINS_PER_DOUBLING = 4
_TTFT_BINS = 81

MAX_CHAINS = 32  # distinct chains remembered; the least recently used goes first


def _ttft_bin(seconds: float) -> int:
    if seconds <= _TTFT_FLOOR_S:
        return 0
    k = math.ceil(_BINS_PER_DOUBLING * math.log2(seconds / _TTFT_FLOOR_S))
    return min(_TTFT_BINS - 1, k)


def _bin_middle_ms(k: int) -> float:
    """The geometric middle of bin k, whose upper edge is 1 ms * 2**(k/4)."""
    if k == 0:
        return _TTFT_FLOOR_S * 1000
    return _TTFT_FLOOR_S * 1000 * 2 ** ((k - 0.5) / _BINS_PER_DOUBLING)


@dataclass
class _Bucket:
    index: int  # floor(start / bucket_s)
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    ttft: list[int] = field(default_factory=lambda: [0] * _TTFT_BINS)  # counts per bin
    answered: int = 0  # first tokens seen: the histogram's total


def _percentile_ms(histogram: list[int], total: int, q: float) -> float | None:
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for k, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return round(_bin_middle_ms(k), 1)
    return round(_bin_middle_ms(len(histogram) - 1), 1)


class Series:
    """Per-bucket counts over the last `span_s` seconds."""

    def __init__(self, bucket_s: float = BUCKET_S, span_s: float = SPAN_S) -> None:
        if bucket_s <= 0 or span_s < bucket_s:
            raise ValueError("a series needs bucket_s > 0 and span_s >= bucket_s")
        self.bucket_s = bucket_s
        self.size = math.ceil(span_s / bucket_s)
        self._buckets: deque[_Bucket] = deque()

    def request(self, now: float, *, failed: bool = False) -> None:
        """A completion request answered (its status sent); `failed` if with an error."""
        bucket = self._bucket(now)
        bucket.requests += 1
        bucket.errors += failed

    def error(self, now: float) -> None:
        """A failure after the request was counted: an error inside a started stream."""
        self._bucket(now).errors += 1

    def tokens(self, now: float, count: int = 1) -> None:
        self._bucket(now).tokens += count

    def first_token(self, now: float, seconds: float) -> None:
        bucket = self._bucket(now)
        bucket.ttft[_ttft_bin(seconds)] += 1
        bucket.answered += 1

    def window(self, now: float) -> dict[str, object]:
        """The last span as columns, oldest bucket first, empty buckets included."""
        last = self._index(now)
        first = last - self.size + 1
        self._drop_before(first)
        by_index = {b.index: b for b in self._buckets}
        empty = _Bucket(0)
        rows = [by_index.get(i, empty) for i in range(first, last + 1)]
        # The newest bucket is still filling: its rate is over the time it has had so far.
        filling = max(1.0, min(self.bucket_s, now - last * self.bucket_s))
        elapsed = [self.bucket_s] * (len(rows) - 1) + [filling]
        histogram = [sum(b.ttft[k] for b in rows) for k in range(_TTFT_BINS)]
        answered = sum(b.answered for b in rows)
        return {
            "bucket_s": self.bucket_s,
            "start": first * self.bucket_s,  # when the oldest bucket begins
            "now": now,
            "requests": [b.requests for b in rows],
            "errors": [b.errors for b in rows],
            "tokens": [b.tokens for b in rows],
            "tokens_per_s": [round(b.tokens / s, 2) for b, s in zip(rows, elapsed, strict=True)],
            "ttft_p50_ms": [_percentile_ms(b.ttft, b.answered, 0.5) for b in rows],
            "ttft_p95_ms": [_percentile_ms(b.ttft, b.answered, 0.95) for b in rows],
            "totals": {
                "requests": sum(b.requests for b in rows),
                "errors": sum(b.errors for b in rows),
                "tokens": sum(b.tokens for b in rows),
                "ttft_p50_ms": _percentile_ms(histogram, answered, 0.5),
                "ttft_p95_ms": _percentile_ms(histogram, answered, 0.95),
            },
        }

    def _index(self, now: float) -> int:
        return math.floor(now / self.bucket_s)

    def _bucket(self, now: float) -> _Bucket:
        index = self._index(now)
        if self._buckets and index <= self._buckets[-1].index:
            # The same bucket, or a clock that stepped back: never reorder, add to the newest.
            return self._buckets[-1]
        self._buckets.append(_Bucket(index))
        self._drop_before(index - self.size + 1)
        return self._buckets[-1]

    def _drop_before(self, index: int) -> None:
        while self._buckets and self._buckets[0].index < index:
            self._buckets.popleft()


@dataclass(frozen=True)
class ChainUsed:
    model_id: str
    stages: tuple[PeerId, ...]  # in order
    uses: int
    age_s: float  # since last used


@dataclass
class _ChainUse:
    uses: int
    last_used: float


class RecentChains:
    """The chains of pipeline stages this gateway's answers went through lately, with how
    often and when last: at most MAX_CHAINS, none older than `span_s`."""

    def __init__(self, span_s: float = SPAN_S, limit: int = MAX_CHAINS) -> None:
        self.span_s = span_s
        self.limit = limit
        # By (model id, stages in order); least recently used first.
        self._chains: dict[tuple[str, tuple[PeerId, ...]], _ChainUse] = {}

    def used(self, now: float, model_id: str, chain: tuple[PeerId, ...]) -> None:
        if not chain:
            return  # a whole-model answer: no chain
        key = (model_id, chain)
        use = self._chains.pop(key, None) or _ChainUse(0, now)
        use.uses += 1
        use.last_used = now
        self._chains[key] = use
        while len(self._chains) > self.limit:
            del self._chains[next(iter(self._chains))]

    def recent(self, now: float) -> list[ChainUsed]:
        """Most recently used first."""
        for key in [k for k, u in self._chains.items() if now - u.last_used > self.span_s]:
            del self._chains[key]
        return [
            ChainUsed(model, chain, u.uses, max(0.0, now - u.last_used))
            for (model, chain), u in reversed(self._chains.items())
        ]
