"""Which connections a node closes to keep its connection set bounded.

A node keeps the links it needs (its relays, the peers it serves or uses, its model
neighbours) and as few others as it can: every open connection costs keep-alives,
gossip heartbeats and memory, so a network where each node kept every peer it ever
met would cost each node more as the network grows. Peers met once, for a DHT query
or a manifest, are closed again once the set is over its bound; the DHT's routing
table remembers them without a connection.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

GRACE_S = 10.0  # a new link is never closed this soon: its first use may still be coming


@dataclass(frozen=True)
class Link:
    """One connected peer as the node sees it now."""

    peer_id: str
    opened_at: float  # when this node first saw the connection
    last_used_at: float  # the last dinet stream over it, either way (opened_at if none)
    busy: bool  # a dinet stream is open on it now (an answer, a chain step, a pull)
    kept: bool  # the node needs it: a relay, a model neighbour, a peer watching this node
    connections: int = 1  # sockets to this peer (two dials crossing leave two, until one is closed)


def links_to_close(links: Iterable[Link], bound: int, now: float, grace_s: float = GRACE_S) -> list[str]:
    """Once more than `bound` connections are open, the peers whose connections to close
    so that three quarters of `bound` remain (room for the links that DHT lookups and
    clients open meanwhile), least recently used first. Busy, kept and new links are
    never closed, so the set may stay above the bound while they are many."""
    links = list(links)
    open_now = sum(link.connections for link in links)
    if open_now <= bound:
        return []
    excess = open_now - bound * 3 // 4
    closable = [link for link in links if not link.busy and not link.kept and now - link.opened_at >= grace_s]
    closable.sort(key=lambda link: (link.last_used_at, link.peer_id))
    chosen: list[str] = []
    for link in closable:
        if excess <= 0:
            break
        chosen.append(link.peer_id)
        excess -= link.connections
    return chosen
