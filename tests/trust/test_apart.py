"""Verifiers chosen apart (address prefixes, regions), standing, and the verifiers' majority."""

from __future__ import annotations

from dinet.client.verify import _Judged, _majority, _outcome
from dinet.trust.apart import Place, address_prefix, apart_first, place_of
from dinet.trust.reputation import PROBATION_GOOD, Event, Standing, fresh, has_standing
from dinet.trust.verify import Verdict
from dinet.wire.ids import PeerId


def test_address_prefixes_are_a_slash_24_or_a_slash_48_and_relayed_addresses_count_for_nothing() -> None:
    assert address_prefix("/ip4/203.0.113.77/tcp/4001") == "203.0.113.0/24"
    assert address_prefix("/ip6/2001:db8:1:2::5/udp/4001/quic-v1") == "2001:db8:1::/48"
    assert address_prefix("/ip4/198.51.100.1/tcp/4001/p2p/12D3KooWx/p2p-circuit") is None
    assert address_prefix("/dns4/example.org/tcp/4001") is None
    assert address_prefix("/ip4/0.0.0.0/tcp/4001") is None
    assert address_prefix("/ip4/not-an-address/tcp/1") is None


def test_candidates_apart_from_every_place_taken_come_first_in_the_callers_order() -> None:
    places = {
        "same-line": place_of(["/ip4/203.0.113.9/tcp/1"], "eu"),  # the producer's /24
        "same-region": place_of(["/ip4/198.51.100.4/tcp/1"], "eu"),
        "far": place_of(["/ip4/192.0.2.4/tcp/1"], "us"),
        "far-too": place_of(["/ip4/192.0.2.200/tcp/1"], "ap"),
    }
    producer = place_of(["/ip4/203.0.113.5/tcp/1"], "eu")
    ranked = ["same-line", "same-region", "far", "far-too"]  # routing's order
    assert apart_first(ranked, places.__getitem__, [producer]) == [
        "far",
        "far-too",
        "same-region",
        "same-line",
    ]
    # Once "far" verifies, its /24 is taken too: "far-too" shares it, "same-region" does not.
    taken = [producer, places["far"]]
    assert apart_first(["same-line", "same-region", "far-too"], places.__getitem__, taken)[0] == "same-region"
    # Nobody apart: any capable peer still checks, in routing's order.
    assert apart_first(["b", "a"], lambda _: Place(), [Place()]) == ["b", "a"]


def _after(events: list[Event]) -> Standing:
    standing = fresh(PeerId("p"), 0.0)
    for event in events:
        standing = standing.after(event, 0.0, 3600.0)
    return standing


def test_standing_takes_about_five_verified_answers_and_one_caught_lie_loses_it() -> None:
    verified = [Event.SUCCESS, Event.VERIFY_PASS]
    assert not has_standing(None)
    assert not has_standing(_after(verified * 4))  # 8 good
    assert has_standing(_after(verified * 5))  # 10 good, score 1
    assert not has_standing(_after(verified * 5 + [Event.VERIFY_FAIL]))  # score 12/20
    assert not has_standing(_after(verified * 5 + [Event.OVERRULED]))  # a covering verifier too
    assert has_standing(None, good_needed=0.0)  # no probation
    assert PROBATION_GOOD == 10.0


def _judged(peer: str, ok: bool) -> _Judged:
    return _Judged(
        PeerId(peer), Verdict(ok=ok, bad_positions=() if ok else (3,), checked=8, worst_margin=0.0), 1.0
    )


def test_the_majority_of_verifiers_decides_and_the_outvoted_are_overruled() -> None:
    assert _majority([_judged("a", True)]) is True
    assert _majority([_judged("a", True), _judged("b", False)]) is None
    split_then_decided = [_judged("colluder", True), _judged("a", False), _judged("b", False)]
    outcome = _outcome(split_then_decided, "")
    assert outcome.verified is False and outcome.verifier == "a" and outcome.bad_positions == (3,)
    assert outcome.overruled == ("colluder",) and outcome.verifiers == ("colluder", "a", "b")
    disputed = _outcome([_judged("a", True), _judged("b", False)], "nobody left")
    assert disputed.verified is False and disputed.disputed and disputed.overruled == ()
    assert disputed.verifier is None  # so nobody's answer is blamed on a split
