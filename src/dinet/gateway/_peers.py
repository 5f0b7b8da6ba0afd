"""The gateway's view of the network: kept fresh, and summarised for /v1/models and the page.

A client learns manifests when it joins, but they expire after a TTL and carry load
figures that age in seconds. A gateway lives long, so it asks a few known peers for
their directories every `refresh_s`, which also measures its round trip to each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import trio

from dinet.client.network import Network, no_tool_support, peer_trust
from dinet.errors import DinetError, ModelNotFound, NoCapablePeer
from dinet.gateway._series import ChainUsed
from dinet.gateway._summary import group_keys, summarize
from dinet.p2p.host import LinkKind, Reachability
from dinet.wire.ids import ModelHash, PeerId
from dinet.wire.manifest import Manifest

logger = logging.getLogger(__name__)

REFRESH_FANOUT = 4


@dataclass(frozen=True)
class ModelChoice:
    """What a request's `model` names: a model id, or one exact version by its hash."""

    model_id: str | None
    model_hash: ModelHash | None


@dataclass(frozen=True)
class BrowserEntry:
    """Where a browser tab dials the node a gateway runs beside (GET /api/browser)."""

    peer_id: PeerId
    addrs: tuple[str, ...]  # its /ws and /wss multiaddrs, each ending in /p2p/<peer_id>
    relay: bool  # it relays for the tabs that dial it: other peers reach them through it


class NetworkView:
    """`node_reachability`, `node_browser`: for a gateway beside a node (`din node
    --api-port`), the node's own reachability now, and where browser tabs dial it."""

    def __init__(
        self,
        network: Network,
        bootstrap: list[str],
        discover_timeout_s: float,
        node_reachability: Callable[[], Reachability] | None = None,
        node_browser: Callable[[], BrowserEntry] | None = None,
    ) -> None:
        self.network = network
        self._bootstrap = bootstrap
        self._discover_timeout_s = discover_timeout_s
        self.node_reachability = node_reachability
        self.node_browser = node_browser
        self.started_at = time.time()

    @property
    def peer_id(self) -> PeerId:
        return self.network.peer_id

    def manifests(self) -> list[Manifest]:
        return sorted(self.network.directory.manifests(), key=lambda m: m.peer_id)

    def link(self, peer_id: PeerId) -> LinkKind | None:
        """How this gateway reaches the peer now: directly, through a relay, or not at all."""
        return self.network.host.link_kind(peer_id)

    def links(self) -> dict[str, int]:
        """Known peers connected now, counted by how: directly or through a relay."""
        counts = {"direct": 0, "relayed": 0}
        for m in self.manifests():
            kind = self.link(m.peer_id)
            if kind is not None:
                counts[kind] += 1
        return counts

    async def keep_fresh(self, every_s: float) -> None:
        """Refresh manifests and round trips until cancelled."""
        while True:
            await self.refresh()
            await trio.sleep(every_s)

    async def refresh(self) -> None:
        network = self.network
        known = network.directory.manifests()
        if not known and self._bootstrap:  # it knows nobody now: start again from the bootstrap peers
            try:
                await network.joiner.join(self._bootstrap)
            except DinetError as exc:
                logger.debug("bootstrap peers unreachable: %s", exc)
            known = network.directory.manifests()
        unprobed = [m for m in known if m.peer_id not in network.rtt_ms]
        probed = [m.peer_id for m in known if m.peer_id in network.rtt_ms]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(network.probe_all, unprobed)
            nursery.start_soon(network.joiner.pull_from_some, probed, REFRESH_FANOUT)

    async def resolve(self, name: str) -> ModelChoice:
        """The model a request names. ModelNotFound if peers are known but none offers it;
        NoCapablePeer if no peer at all is found in time."""
        if not self.network.directory.manifests():
            await self.network.discover(None, None, timeout=self._discover_timeout_s)
        offers = [o for m in self.network.directory.manifests() for o in m.models]
        if any(o.model_id == name for o in offers):
            return ModelChoice(name, None)
        if any(o.model_hash == name for o in offers):
            return ModelChoice(None, ModelHash(name))
        if not offers:
            if self.network.directory.manifests():  # e.g. only nodes that serve no model
                raise NoCapablePeer("no peer known now offers a model")
            raise NoCapablePeer("no peer of the network is reachable now")
        available = sorted({o.model_id for o in offers})
        raise ModelNotFound(f"no peer offers model {name!r}; available: {', '.join(available)}")

    def tool_model(self, choice: ModelChoice, name: str) -> ModelChoice:
        """The model of `choice` in a version whose chat template declares tool support (pinned
        by its hash when versions differ), or RequestError naming `tools`, so that a request
        with tools is never sent to a template that would render them as a guess."""
        offers = [
            o
            for m in self.network.directory.manifests()
            for o in m.models
            if (choice.model_id is None or o.model_id == choice.model_id)
            and (choice.model_hash is None or o.model_hash == choice.model_hash)
            and not o.stage
        ]
        able = sorted({o.model_hash for o in offers if o.tools})
        if not able:
            raise no_tool_support(name)
        if all(o.tools for o in offers):
            return choice
        return ModelChoice(None, able[0])

    def models(self) -> list[dict[str, object]]:
        """One entry per model id, with how many peers serve it and in which versions.

        `tools` is true when any version served whole declares tool support: a request with
        tools naming the model id is then sent to such a version (`tool_model`);
        `tool_model_hashes` lists those versions."""
        by_id: dict[str, dict[str, object]] = {}
        for m in self.manifests():
            for offer in m.models:
                entry = by_id.setdefault(
                    offer.model_id,
                    {
                        "id": offer.model_id,
                        "object": "model",
                        "created": 0,
                        "owned_by": "dinet",
                        "peers": 0,
                        "model_hashes": [],
                        "quantization": offer.quantization,
                        "context": offer.context,
                        "task": offer.task,  # "generate", or "embed" (/v1/embeddings)
                        **({"dimensions": offer.dimensions} if offer.task == "embed" else {}),
                        "tools": False,
                        "tool_model_hashes": [],
                    },
                )
                entry["peers"] = int(entry["peers"]) + 1  # type: ignore[call-overload]
                hashes, tool_hashes = entry["model_hashes"], entry["tool_model_hashes"]
                assert isinstance(hashes, list) and isinstance(tool_hashes, list)
                if offer.model_hash not in hashes:
                    hashes.append(offer.model_hash)
                if offer.tools and not offer.stage and offer.model_hash not in tool_hashes:
                    tool_hashes.append(offer.model_hash)
                    entry["tools"] = True
        return [by_id[k] for k in sorted(by_id)]

    def gateway_info(self, now: float) -> dict[str, object]:
        beside = self.node_reachability
        return {
            "peer_id": self.peer_id,
            "uptime_s": round(now - self.started_at, 1),
            "node_reachability": None if beside is None else asdict(beside()),
        }

    def summary(self, chains: list[ChainUsed]) -> dict[str, object]:
        """The network grouped by region and model, for the page's drawing (see _summary)."""
        return {
            "gateway": self.gateway_info(time.time()),
            **summarize(self.manifests(), self.link, chains),
            "models": self.models(),
        }

    def snapshot(
        self, region: str | None = None, model: str | None = None, limit: int | None = None
    ) -> dict[str, object]:
        """The peer rows: all, or those in `region` and/or serving `model` ("": serving
        none), at most `limit` of them; `total` counts them before the limit."""
        now = time.time()
        chosen = self.manifests()
        if region is not None or model is not None:
            chosen = [
                m
                for m in chosen
                if any((region in (None, r)) and (model in (None, g)) for r, g, _ in group_keys(m))
            ]
        total = len(chosen)
        peers = []
        for m in chosen[:limit]:
            rtt = self.network.rtt_ms.get(m.peer_id)
            peers.append(
                {
                    "peer_id": m.peer_id,
                    "region": m.region,
                    "version": m.version,
                    "models": [
                        {
                            "model_id": o.model_id,
                            "model_hash": o.model_hash,
                            "quantization": o.quantization,
                            "tools": o.tools,
                        }
                        for o in m.models
                    ],
                    "load": {"active": m.load.active, "queued": m.load.queued},
                    "max_concurrent": m.max_concurrent,
                    "tokens_per_s": m.tokens_per_s,
                    "ttft_ms": m.ttft_ms,
                    "rtt_ms": None if rtt is None else round(rtt, 2),
                    "reach": m.reach,  # what the peer found out about itself
                    "link": self.link(m.peer_id),  # how this gateway reaches it
                    "price_per_token": m.price_per_token,
                    **peer_trust(self.network, m.peer_id),  # reputation, evidence, excluded
                    "age_s": round(max(0.0, now - m.issued_at), 1),
                }
            )
        return {
            "gateway": self.gateway_info(now),
            "peers": peers,
            "total": total,
            "models": self.models(),
        }
