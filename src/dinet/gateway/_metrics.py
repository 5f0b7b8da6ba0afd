"""Prometheus metrics of one gateway, in a registry of its own."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


LINKS = ("direct", "relayed")
REACH_STATES = ("public", "private", "unknown")


class GatewayMetrics:
    """`links()`: known peers connected now, by link (direct, relayed). `node_reach()`: the
    reachability state of the node this gateway runs beside, if it runs beside one.
    `reach()`: this gateway's own NAT traversal counters (`PeerHost.reach_counters`)."""

    def __init__(
        self,
        peers_known: Callable[[], int],
        links: Callable[[], Mapping[str, int]],
        node_reach: Callable[[], str] | None = None,
        reach: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self.registry = CollectorRegistry()
        self._reach = reach
        self.requests = Counter(
            "dinet_gateway_requests",
            "HTTP API requests answered, by endpoint and status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "dinet_gateway_tokens",
            "Tokens processed, by kind (prompt or completion)",
            ["kind"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "dinet_gateway_time_to_first_token_seconds",
            "From a request's arrival to its first token",
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self.time_per_token = Histogram(
            "dinet_gateway_time_per_output_token_seconds",
            "Per-token latency after the first token (one observation per answer: its mean)",
            buckets=_TPOT_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "dinet_gateway_errors",
            "Errors answered, by kind (OpenAI error code)",
            ["kind"],
            registry=self.registry,
        )
        self.peers = Gauge("dinet_gateway_peers_known", "Peers with a valid manifest", registry=self.registry)
        self.peers.set_function(lambda: float(peers_known()))
        self.links = Gauge(
            "dinet_gateway_peer_links",
            "Known peers this gateway is connected to, by link: direct, or through a relay",
            ["link"],
            registry=self.registry,
        )
        for kind in LINKS:
            self.links.labels(kind).set_function(_count_of(links, kind))
        if node_reach is not None:
            node_reachability = Gauge(
                "dinet_node_reachability",
                "The node beside this gateway: 1 for its reachability now (public: peers dialed it "
                "back; private: behind NAT, reached through relays; unknown), 0 for the others",
                ["state"],
                registry=self.registry,
            )
            for state in REACH_STATES:
                node_reachability.labels(state).set_function(_is(node_reach, state))
        self.reach = Gauge(
            "dinet_reach",
            "NAT traversal, totals since start: punch_attempts, punch_successes, circuits_relayed, "
            "relayed_bytes; and now: reservations_held, circuits_active",
            ["what"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        for what, value in self._reach().items():
            self.reach.labels(what=what).set(value)
        return generate_latest(self.registry)


def _count_of(counts: Callable[[], Mapping[str, int]], key: str) -> Callable[[], float]:
    return lambda: float(counts().get(key, 0))


def _is(current: Callable[[], str], value: str) -> Callable[[], float]:
    return lambda: float(current() == value)
