"""`din node --model ID --follow`: serve the newest version a model's publisher has signed.

The node looks up the publisher's model-version record in the DHT every
`follow_every_s`. When the newest version it names is not the one served, the node
pulls it from the peers that hold it (chunks any stored version already has are
copied locally, so only changed chunks cross the network), then switches over
(`dinet.node.switching`): streams in flight finish on the old version.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from dinet.config import NodeSettings
from dinet.errors import DinetError, ModelVersionsError, PeerError, PullFailed
from dinet.models.fetch import PullReport, pull_model
from dinet.models.store import ModelStore
from dinet.node._serving import Serving
from dinet.node.switching import OpenVersion, ServingSwitch, hold_version
from dinet.p2p.joining import Joiner
from dinet.wire.ids import ModelHash, PeerId
from dinet.wire.versions import verify_versions

logger = logging.getLogger(__name__)


class Follower:
    """Looks for newer versions of one model id and switches the node to them."""

    def __init__(
        self, switch: ServingSwitch, store: ModelStore, publisher: PeerId, model_id: str, every_s: float
    ) -> None:
        self._switch = switch
        self._store = store
        self.publisher = publisher
        self.model_id = model_id
        self._every_s = every_s
        self._sequence = -1  # the highest record sequence seen: never act on an older one
        self._unservable: set[ModelHash] = set()  # versions whose engine would not start

    async def run(self, joiner: Joiner) -> None:
        logger.info("following %s as signed by %s", self.model_id, self.publisher)
        while True:
            await self.look(joiner)
            await trio.sleep(self._every_s)

    async def look(self, joiner: Joiner) -> None:
        """Switch to the newest version the record names, if it is not the one served."""
        try:
            signed = await joiner.host.get_versions(self.publisher, self.model_id)
            if signed is None:
                logger.debug("no version record for %s by %s yet", self.model_id, self.publisher)
                return
            record = verify_versions(signed)
        except (PeerError, ModelVersionsError) as exc:  # a ModelVersionsError: it expired just now
            logger.info("version record for %s not read: %s", self.model_id, exc)
            return
        if record.sequence < self._sequence:
            return
        self._sequence = record.sequence
        newest = record.newest
        if newest.model_hash == self._switch.model_hash or newest.model_hash in self._unservable:
            return
        logger.info("version %s of %s is newer: pulling %s", newest.version, self.model_id, newest.model_hash)
        try:
            report = await self._pull(joiner, newest.model_hash)
        except DinetError as exc:  # nobody holds it yet, or the pull broke: the next look retries
            logger.warning("pull of %s failed, will retry: %s", newest.model_hash[:16], exc)
            return
        logger.info(
            "pulled %s: %d chunks fetched (%d bytes), %d reused",
            newest.model_hash[:16],
            report.fetched_chunks,
            report.fetched_bytes,
            report.reused_chunks,
        )
        try:
            switched = await self._switch.switch_to(newest.model_hash)
        except DinetError as exc:
            logger.error("cannot serve %s: %s", newest.model_hash[:16], exc)
            switched = False
        if not switched:
            self._unservable.add(newest.model_hash)

    async def _pull(self, joiner: Joiner, model_hash: ModelHash) -> PullReport:
        """`model_hash` complete in the store: already there (the publisher's own node), or
        pulled from the publisher (who usually holds what it just published, before any
        node announces it), or else from the holders that peers and the DHT name."""
        stored = await trio.to_thread.run_sync(self._store.get, model_hash)
        if stored is None or not stored.complete:
            if await joiner.host.reach(self.publisher):
                try:
                    return await pull_model(joiner.host, self._store, model_hash, [self.publisher])
                except PullFailed as exc:
                    logger.info("the publisher does not hand out %s: %s", model_hash[:16], exc)
            return await pull_model(joiner.host, self._store, model_hash, await joiner.holders(model_hash))
        return await pull_model(joiner.host, self._store, model_hash, [])


@asynccontextmanager
async def following(settings: NodeSettings, open_version: OpenVersion) -> AsyncIterator[Serving]:
    """The node's Serving with `--follow`: the model the settings name first, then each
    newer version its publisher signs."""
    store = ModelStore(settings.home)
    async with trio.open_nursery() as versions:
        first = await versions.start(hold_version, open_version, None)
        switch = ServingSwitch(versions, open_version, first)
        assert first.serving.model_hash is not None
        stored = await trio.to_thread.run_sync(store.get, first.serving.model_hash)
        assert stored is not None
        publisher = PeerId(settings.publisher or stored.card.publisher)
        follower = Follower(switch, store, publisher, stored.card.model_id, settings.follow_every_s)
        switch.serving.background.append(follower.run)
        try:
            yield switch.serving
        finally:
            versions.cancel_scope.cancel()
