"""A node's side of demand: count what its model is asked, publish demand records on the
model's topic, and keep a book of the records and manifests it hears (`--serve auto`
decides from it, `dinet.node.auto`).

Every node serving a model publishes a record each `demand_every_s`, with probability
`publish_probability` (so a topic carries about `demand_publishers` records a period
whatever its number of servers). A record with no demand is published too: it says its
publisher still serves the model, which is how a model's supply is counted at scale.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence

import trio

from dinet.config import NodeSettings
from dinet.errors import DemandRecordError
from dinet.overlay import demand as core
from dinet.p2p.directory import PeerDirectory
from dinet.p2p.host import PeerHost
from dinet.wire.demand import DemandRecord, SignedDemand, sign_demand, verify_demand
from dinet.wire.ids import ModelHash, PeerId, model_topic
from dinet.wire.keys import Signer

logger = logging.getLogger(__name__)

PERIODS_LIVE = 3.0  # a record counts this many periods: two in a row may be lost


class DemandDesk:
    """Counts requests and busy refusals by model, publishes records, hears others'."""

    def __init__(self, key: Signer, peer_id: PeerId, settings: NodeSettings, rng: random.Random) -> None:
        self._key = key
        self.peer_id = peer_id
        self._every_s = settings.demand_every_s
        self._target = settings.demand_publishers
        self._rng = rng
        self.book = core.DemandBook(record_ttl_s=PERIODS_LIVE * settings.demand_every_s)
        self.watched: set[ModelHash] = set()  # topics followed besides the served model's
        self._counts: dict[ModelHash, list[int]] = {}  # by model: [requests, busy refusals]

    def saw(self, model_hash: ModelHash, *, busy: bool = False) -> None:
        """A request for `model_hash` arrived (`busy`: and was refused for want of a slot)."""
        counts = self._counts.setdefault(model_hash, [0, 0])
        counts[0] += 1
        counts[1] += busy

    def heard(self, signed: SignedDemand) -> None:
        """A record from a model's topic: into the book, its publisher counted as a server."""
        try:
            record = verify_demand(signed)
        except DemandRecordError as exc:
            logger.info("dropped a gossiped demand record: %s", exc)
            return
        self._enter(record, time.time())

    def _enter(self, record: DemandRecord, now: float) -> None:
        self.book.add(
            core.DemandRecord(
                record.publisher,
                record.model_hash,
                requests_per_min=record.requests_per_min,
                busy_per_min=record.busy_per_min,
                at=now,  # when it arrived: the book's clock, whatever the publisher's says
                weight=core.record_weight(record.probability, PERIODS_LIVE),
                from_server=True,
            )
        )

    def servers(self, model_hash: ModelHash, directory: PeerDirectory, now: float) -> float:
        """This node's estimate of the model's servers, itself among them if it serves it."""
        named = len(directory.serving(None, model_hash, now)) + 1
        return max(float(named), self.book.server_count(model_hash, now, besides=self.peer_id) + 1)

    async def publish(
        self, host: PeerHost, directory: PeerDirectory, served: Callable[[], Sequence[ModelHash]]
    ) -> None:
        """Each period, each served model's record on its topic (with probability `p`) (forever)."""
        while True:
            started = time.time()
            await trio.sleep(self._every_s)
            now = time.time()
            counts = {m: self._counts.pop(m) for m in list(self._counts)}
            for model in served():
                await self._publish(host, directory, model, counts.get(model, [0, 0]), now - started, now)

    async def _publish(
        self,
        host: PeerHost,
        directory: PeerDirectory,
        model: ModelHash,
        counts: list[int],
        window: float,
        now: float,
    ) -> None:
        requests, busy = counts
        p = core.publish_probability(self.servers(model, directory, now), self._target)
        record = DemandRecord(
            publisher=self.peer_id,
            model_hash=model,
            requests_per_min=requests * 60.0 / window,
            busy_per_min=busy * 60.0 / window,
            window_s=window,
            probability=p,
            issued_at=now,
            expires_at=now + PERIODS_LIVE * self._every_s,
        )
        if self._rng.random() >= p:
            return
        self._enter(record, now)  # gossip does not bring a node its own messages
        await host.publish(model_topic(model), sign_demand(record, self._key).model_dump_json().encode())
        logger.debug("demand for %s: %d requests, %d busy in %.0fs", model[:16], requests, busy, window)
