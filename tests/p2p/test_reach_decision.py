"""How peers' dial-back answers decide reachability (the sans-IO core; no network)."""

from __future__ import annotations

from dinet.p2p.reachability import DialBacks
from dinet.wire.ids import PeerId

OUTSIDE = "/ip4/198.18.2.1/tcp/4001"  # a home router's WAN side in the lab: "private" to Python
LAN = "/ip4/10.0.1.2/tcp/4001"
PUBLIC = "/ip4/198.18.1.2/tcp/4001"
A, B, C = PeerId("peer-a"), PeerId("peer-b"), PeerId("peer-c")
FRESH_S = 600.0


def answers(*given: tuple[str, PeerId, bool], at: float = 0.0) -> DialBacks:
    dial_backs = DialBacks(fresh_for=FRESH_S)
    for addr, peer, reached in given:
        dial_backs.record(addr, peer, reached, at)
    return dial_backs


def test_two_distinct_peers_that_dial_back_make_a_public_node_whatever_the_address_range():
    decided = answers((PUBLIC, A, True), (PUBLIC, B, True)).decide([PUBLIC], [], peers=2, now=1.0)
    assert (decided.state, decided.addrs) == ("public", (PUBLIC,))
    assert decided.reason == f"2 peers dialed back {PUBLIC}"


def test_one_peer_saying_it_twice_is_not_two_peers():
    dial_backs = answers((PUBLIC, A, True))
    dial_backs.record(PUBLIC, A, True, 5.0)
    decided = dial_backs.decide([PUBLIC], [], peers=3, now=6.0)
    assert decided.state == "unknown"
    assert decided.reason == "1 of 3 peers answered; 2 must agree"


def test_two_peers_that_cannot_dial_back_make_a_private_node():
    decided = answers((OUTSIDE, A, False), (OUTSIDE, B, False)).decide([OUTSIDE], [], peers=2, now=1.0)
    assert (decided.state, decided.addrs) == ("private", ())
    assert decided.reason == f"2 peers could not dial back {OUTSIDE}"


def test_a_home_node_reached_on_its_lan_but_not_from_outside_is_private_and_keeps_the_lan_address():
    dial_backs = answers((LAN, A, True), (LAN, B, True), (OUTSIDE, C, False), (OUTSIDE, B, False))
    decided = dial_backs.decide([LAN, OUTSIDE], [], peers=3, now=1.0)
    assert (decided.state, decided.addrs) == ("private", (LAN,))


def test_with_fewer_than_two_peers_it_stays_unknown():
    decided = answers((PUBLIC, A, True)).decide([PUBLIC], [], peers=1, now=1.0)
    assert (decided.state, decided.reason) == ("unknown", "fewer than 2 peers to ask")


def test_answers_go_stale_and_answers_about_dropped_addresses_are_forgotten():
    dial_backs = answers((PUBLIC, A, True), (PUBLIC, B, True))
    assert dial_backs.decide([PUBLIC], [], peers=2, now=FRESH_S + 1).state == "unknown"
    dial_backs = answers((PUBLIC, A, True), (PUBLIC, B, True))
    dial_backs.keep_only({LAN})
    assert dial_backs.decide([PUBLIC], [], peers=2, now=1.0).state == "unknown"


def test_an_announced_address_that_fails_is_reported_still_advertised_and_not_private():
    dial_backs = answers((PUBLIC, A, True), (PUBLIC, B, True), (OUTSIDE, A, False), (OUTSIDE, B, False))
    decided = dial_backs.decide([PUBLIC, OUTSIDE], [OUTSIDE], peers=2, now=1.0)
    assert (decided.state, decided.addrs) == ("public", (PUBLIC, OUTSIDE))
    assert decided.reason == f"2 peers dialed back {PUBLIC}; announced {OUTSIDE} not dialed back"


def test_an_announced_address_that_fails_with_nothing_else_dialed_back_is_private_and_still_advertised():
    dial_backs = answers((OUTSIDE, A, False), (OUTSIDE, B, False))
    decided = dial_backs.decide([LAN, OUTSIDE], [OUTSIDE], peers=2, now=1.0)
    assert (decided.state, decided.addrs) == ("private", (OUTSIDE,))
    assert decided.reason == f"2 peers could not dial back {OUTSIDE} (announced)"
