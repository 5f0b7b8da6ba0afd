"""Which connections a node closes to stay within its bound (the pure core)."""

from __future__ import annotations

from dinet.overlay.connections import GRACE_S, Link, links_to_close

NOW = 1000.0


def link(peer: str, used: float, *, busy: bool = False, kept: bool = False, opened: float = 0.0) -> Link:
    return Link(peer, opened, used, busy, kept)


def test_nothing_is_closed_within_the_bound():
    assert links_to_close([link("a", 1), link("b", 2)], bound=2, now=NOW) == []


def test_past_the_bound_the_least_recently_used_idle_links_go_down_to_three_quarters_of_it():
    links = [link(f"p{i}", used=i) for i in range(9)]
    assert links_to_close(links, bound=8, now=NOW) == ["p0", "p1", "p2"]


def test_busy_kept_and_new_links_stay_even_over_the_bound():
    links = [
        link("busy", 1, busy=True),
        link("relay", 2, kept=True),
        link("new", 3, opened=NOW - GRACE_S / 2),
        link("idle", 4),
    ]
    assert links_to_close(links, bound=1, now=NOW) == ["idle"]


def test_a_peer_with_two_connections_counts_twice_and_closing_it_frees_both():
    # 8 peers, one of them with two sockets (two dials crossed): 9 connections, over 8.
    links = [Link("twice", 0.0, 0.5, False, False, connections=2)] + [
        link(f"p{i}", used=i + 1) for i in range(7)
    ]
    assert links_to_close(links, bound=8, now=NOW) == ["twice", "p0"]
