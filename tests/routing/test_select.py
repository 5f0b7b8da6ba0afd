from dataclasses import replace

import pytest

from dinet.routing.select import PeerView, decode_speed, rank_peers, token_budget, trusted


def view(peer_id, rtt=1.0, tps=50.0, ttft=20.0, active=0, queued=0, slots=1, **more):
    return PeerView(peer_id, rtt, tps, ttft, active, queued, slots, **more)


def order(peers, max_tokens=128, policy="latency", **kw):
    return [p.peer_id for p in rank_peers(peers, max_tokens, policy, **kw)]


def test_faster_idle_peer_wins():
    assert order([view("slow", tps=20), view("fast", tps=90)]) == ["fast", "slow"]


def test_a_busy_fast_peer_loses_to_an_idle_one_of_similar_speed():
    assert order([view("busy", tps=90, active=1, queued=2), view("idle", tps=70)])[0] == "idle"


def test_a_far_peer_loses_on_short_requests():
    assert order([view("far", rtt=300, tps=100), view("near", rtt=1, tps=60)], max_tokens=4)[0] == "near"


def test_throughput_policy_prefers_speed_over_distance():
    peers = [view("near-slow", rtt=1, tps=40), view("far-fast", rtt=2000, tps=100)]
    assert order(peers, policy="latency")[0] == "near-slow"
    assert order(peers, policy="throughput")[0] == "far-fast"


def test_cost_policy_prefers_the_cheaper_peer_then_the_faster():
    peers = [
        view("dear", tps=100, price_per_token=0.002),
        view("cheap-slow", tps=20),
        view("cheap-fast", tps=80),
    ]
    assert order(peers, policy="cost") == ["cheap-fast", "cheap-slow", "dear"]
    assert order(peers, policy="latency")[0] == "dear"


def test_a_fresh_measurement_beats_the_advert_and_a_stale_one_decays():
    liar = view("liar", tps=200, observed_tokens_per_s=10.0, observed_age_s=0.0)
    honest = view("honest", tps=60)
    assert order([liar, honest])[0] == "honest"
    assert decode_speed(liar) == 10.0
    stale = replace(liar, observed_age_s=3600.0)
    assert decode_speed(stale) > 199.0
    assert order([stale, honest])[0] == "liar"


def test_bad_reputation_and_another_region_cost_something():
    shady, trusted = view("shady", tps=80, reputation=0.1), view("trusted", tps=60, reputation=1.0)
    assert order([shady, trusted])[0] == "trusted"
    peers = [view("abroad", tps=60, region="us"), view("home", tps=60, region="eu")]
    assert order(peers, max_tokens=16, region="eu")[0] == "home"


def test_ties_are_broken_by_peer_id_and_limit_keeps_the_best():
    assert order([view("b"), view("a")], 16) == ["a", "b"]
    peers = [view(f"p{i:04d}", tps=float(i + 1)) for i in range(1000)]
    best = rank_peers(peers, 64, limit=3)
    assert [p.peer_id for p in best] == ["p0999", "p0998", "p0997"]
    assert best == rank_peers(peers, 64)[:3]


def test_low_reputation_excludes_only_on_enough_evidence():
    peers = [
        view("liar", reputation=0.2, evidence=4.0),
        view("new-and-unlucky", reputation=0.2, evidence=1.0),
        view("fine", reputation=0.9, evidence=40.0),
        view("unknown"),
    ]
    assert [p.peer_id for p in trusted(peers)] == ["new-and-unlucky", "fine", "unknown"]
    assert [p.peer_id for p in trusted(peers, exclude_below=0.1)] == [p.peer_id for p in peers]
    assert [p.peer_id for p in trusted(peers, min_evidence=1.0)] == ["fine", "unknown"]


def test_an_unprobed_near_peer_ranks_before_an_unprobed_far_one_by_coordinates():
    near = view("near", rtt=None, estimated_rtt_ms=4.0)
    far = view("far", rtt=None, estimated_rtt_ms=400.0)
    guessed = view("guessed", rtt=None)  # no coordinates: the flat UNKNOWN_RTT_MS
    assert order([far, guessed, near], max_tokens=4) == ["near", "guessed", "far"]
    # A measured round trip beats any estimate.
    assert replace(far, rtt_ms=1.0).known_rtt_ms == 1.0


def test_under_a_deadline_peers_that_can_meet_it_come_first():
    # The cheapest peer is too slow to answer 100 tokens in 3 s.
    cheap = view("cheap", tps=20, price_per_token=0.1)
    dear = view("dear", tps=80, price_per_token=1.0)
    assert order([cheap, dear], max_tokens=100, policy="cost") == ["cheap", "dear"]
    assert order([cheap, dear], max_tokens=100, policy="cost", deadline_s=3.0) == ["dear", "cheap"]
    # When none can, cost decides as before.
    assert order([cheap, dear], max_tokens=100, policy="cost", deadline_s=0.01) == ["cheap", "dear"]


def test_the_deadline_token_budget_rests_on_measured_speed():
    claims = view("claims", tps=100, ttft=100, observed_tokens_per_s=20.0, observed_age_s=0.0)
    assert token_budget(claims, 2.0) < token_budget(replace(claims, observed_tokens_per_s=None), 2.0) // 3
    assert token_budget(claims, 2.0) == pytest.approx(20 * (2.0 - 0.101), abs=1)
