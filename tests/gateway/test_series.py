"""The gateway's last-hour series, driven by a fake clock (plain numbers)."""

from __future__ import annotations

import pytest

from dinet.gateway._series import ChainUsed, RecentChains, Series
from dinet.wire.ids import PeerId

T0 = 1_700_000_000.0  # a bucket boundary: divisible by 10


def test_events_land_in_the_bucket_of_their_time():
    series = Series(bucket_s=10, span_s=60)
    series.request(T0 + 1)
    series.request(T0 + 2, failed=True)
    series.tokens(T0 + 3, 40)
    series.request(T0 + 15)
    series.tokens(T0 + 15, 5)
    window = series.window(T0 + 19)
    assert window["start"] == T0 - 40  # six buckets, the newest holding T0 + 19
    assert window["requests"] == [0, 0, 0, 0, 2, 1]
    assert window["errors"] == [0, 0, 0, 0, 1, 0]
    assert window["tokens"] == [0, 0, 0, 0, 40, 5]
    assert window["totals"] == {
        "requests": 3,
        "errors": 1,
        "tokens": 45,
        "ttft_p50_ms": None,
        "ttft_p95_ms": None,
    }


def test_tokens_per_second_of_the_filling_bucket_counts_only_its_elapsed_time():
    series = Series(bucket_s=10, span_s=30)
    series.tokens(T0 + 2, 100)  # a full bucket
    series.tokens(T0 + 11, 20)  # the newest bucket, 4 s old at T0 + 14
    assert series.window(T0 + 14)["tokens_per_s"] == [0.0, 10.0, 5.0]


def test_an_hour_later_the_old_buckets_are_gone_and_memory_stays_bounded():
    series = Series(bucket_s=10, span_s=3600)
    for second in range(0, 7200, 3):  # two hours of traffic
        series.request(T0 + second)
    assert len(series._buckets) <= 360
    window = series.window(T0 + 7199)
    assert len(window["requests"]) == 360
    assert window["totals"]["requests"] == 1200  # one per 3 s over the last hour only
    assert series.window(T0 + 7200 + 3600)["totals"]["requests"] == 0


def test_time_to_first_token_percentiles_are_within_ten_percent():
    series = Series(bucket_s=60, span_s=600)
    for ms in range(1, 101):  # 10 ms .. 1000 ms
        series.first_token(T0 + 5, ms * 0.01)
    window = series.window(T0 + 30)
    p50, p95 = window["ttft_p50_ms"][-1], window["ttft_p95_ms"][-1]
    assert p50 == pytest.approx(500, rel=0.1)
    assert p95 == pytest.approx(950, rel=0.1)
    assert window["totals"]["ttft_p50_ms"] == p50
    assert window["ttft_p50_ms"][:-1] == [None] * 9  # no answer then: no percentile, not zero


def test_a_clock_that_steps_back_adds_to_the_newest_bucket():
    series = Series(bucket_s=10, span_s=60)
    series.request(T0 + 25)
    series.request(T0 + 3)  # the wall clock went back 22 s
    assert series.window(T0 + 25)["requests"][-1] == 2


def test_a_series_shorter_than_one_bucket_is_refused():
    with pytest.raises(ValueError):
        Series(bucket_s=10, span_s=5)


def test_recent_chains_count_uses_and_forget_the_stale_and_the_least_recent():
    a, b, c = (tuple(PeerId(f"{name}{k}") for k in range(2)) for name in "abc")
    chains = RecentChains(span_s=600, limit=2)
    chains.used(T0, "m", a)
    chains.used(T0 + 1, "m", b)
    chains.used(T0 + 2, "m", a)
    chains.used(T0 + 3, "m", ())  # a whole-model answer
    assert chains.recent(T0 + 4) == [ChainUsed("m", a, 2, 2.0), ChainUsed("m", b, 1, 3.0)]
    chains.used(T0 + 5, "m", c)  # a third: b, the least recently used, goes
    assert [used.stages for used in chains.recent(T0 + 6)] == [c, a]
    assert [used.stages for used in chains.recent(T0 + 603)] == [c]  # a last used 601 s ago
