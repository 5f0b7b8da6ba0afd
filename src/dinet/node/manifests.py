"""A node's side of manifests: build and sign its own, answer queries, and gossip it on
the topics of the models it serves when its offer changes. The same topics carry demand
records (`dinet.node.demand`), passed on to whoever wants them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from typing import Annotated

import trio
from pydantic import Field, TypeAdapter, ValidationError

from dinet.errors import ManifestError, PeerError, WireError
from dinet.p2p.directory import PeerDirectory
from dinet.p2p.host import PeerHost, Subscription
from dinet.p2p.streams import FramedStream, Stream
from dinet.wire.debt import SignedDebt
from dinet.wire.demand import SignedDemand
from dinet.wire.ids import PROTOCOL_VERSION, ModelHash, PeerId, model_topic
from dinet.wire.keys import Signer
from dinet.wire.manifest import (
    MANIFEST_TTL_S,
    Load,
    Manifest,
    ManifestList,
    ManifestQuery,
    ModelOffer,
    SignedManifest,
    sign_manifest,
)

logger = logging.getLogger(__name__)

QUERY_WAIT_S = 5.0
# A signed manifest is handed out again while it is this young and says the same:
# every query re-signing it cost a node of a busy network CPU for nothing.
RESIGN_AFTER_S = 5.0
# What a change of makes a node gossip its manifest; load and speed change all the
# time and are read from the manifest itself when a peer is about to be used.
OFFER_FIELDS = ("models", "addrs", "reach", "region", "price_per_token", "price_per_prompt_token")


class ManifestPublisher:
    """Builds this node's signed manifest from live figures, and shares the directory."""

    def __init__(
        self,
        key: Signer,
        peer_id: PeerId,
        directory: PeerDirectory,
        describe: Callable[[], dict[str, object]],
        *,
        also_follow: Collection[ModelHash] = (),
        on_demand: Callable[[SignedDemand], None] = lambda _: None,
        on_debt: Callable[[SignedDebt], None] = lambda _: None,
    ) -> None:
        self._key = key
        self._also_follow = also_follow  # topics of models not served (yet): `--serve auto`
        self._on_demand = on_demand
        self._on_debt = on_debt
        self._peer_id = peer_id
        self.directory = directory
        self._describe = describe  # live fields: addrs, models, load, speed, price ...
        self._signed: tuple[dict[str, object], float, SignedManifest] | None = None

    def current(self) -> SignedManifest:
        now = time.time()
        fields = self._describe()
        if self._signed is not None:
            held_fields, signed_at, held = self._signed
            if held_fields == fields and now - signed_at < RESIGN_AFTER_S:
                return held
        manifest = Manifest(
            peer_id=self._peer_id,
            version=PROTOCOL_VERSION,
            issued_at=now,
            expires_at=now + MANIFEST_TTL_S,
            **fields,  # type: ignore[arg-type]
        )
        signed = sign_manifest(manifest, self._key)
        self._signed = (fields, now, signed)
        return signed

    async def handle_query(self, stream: Stream) -> None:
        framed = FramedStream(stream)
        try:
            with trio.fail_after(QUERY_WAIT_S):
                payload = await framed.receive()
            if payload is None:
                return
            query = ManifestQuery.model_validate_json(payload)
            manifests = [self.current()]
            if query.include_known:
                manifests += self.directory.signed(
                    model_id=query.model_id, model_hash=query.model_hash, limit=query.limit
                )
            await framed.send(ManifestList(manifests=tuple(manifests)))
        except (trio.TooSlowError, WireError, ValidationError, PeerError) as exc:
            logger.debug("manifest query from %s refused: %s", framed.remote_peer, exc)
            await framed.reset()
            return
        await framed.close()

    async def gossip(self, host: PeerHost, check_every_s: float) -> None:
        """Follow the topics of the models this node serves and publish its manifest there
        when its offer changes (forever): the other servers of a model learn of it, and
        pass it on to clients that ask them. Nothing is published while nothing changes,
        so a topic's traffic does not grow with its servers' number."""
        followed: set[ModelHash] = set()
        last_offer: dict[str, object] | None = None
        async with trio.open_nursery() as nursery:
            while True:
                fields = self._describe()
                served = {offer.model_hash for offer in fields["models"]}  # type: ignore[attr-defined]
                for model_hash in (served | set(self._also_follow)) - followed:
                    subscription = await host.subscribe(model_topic(model_hash))
                    nursery.start_soon(self._follow, subscription)
                    followed.add(model_hash)
                offer = {name: fields.get(name) for name in OFFER_FIELDS}
                if offer != last_offer:
                    body = self.current().model_dump_json().encode()
                    for model_hash in served:
                        await host.publish(model_topic(model_hash), body)
                    last_offer = offer
                await trio.sleep(check_every_s)

    async def _follow(self, subscription: Subscription) -> None:
        """Keep the directory fed from one topic, and pass its demand records on; forged or
        expired manifests are dropped."""
        while True:
            data = await subscription.get()
            try:
                message = _TOPIC_MESSAGE.validate_json(data)
            except ValidationError as exc:
                logger.info("dropped a gossiped message: %s", exc.errors()[0]["msg"])
                continue
            if isinstance(message, SignedDemand):
                self._on_demand(message)
                continue
            if isinstance(message, SignedDebt):
                self._on_debt(message)
                continue
            try:
                self.directory.add(message)
            except ManifestError as exc:
                logger.info("dropped a gossiped manifest: %s", exc)


# What a model's topic carries, told apart by `kind`.
_TOPIC_MESSAGE: TypeAdapter[SignedManifest | SignedDemand | SignedDebt] = TypeAdapter(
    Annotated[SignedManifest | SignedDemand | SignedDebt, Field(discriminator="kind")]
)


def offer(
    model_id: str,
    model_hash: ModelHash,
    quantization: str,
    context: int,
    n_layers: int,
    span: tuple[int, int] | None = None,
    tools: bool = False,
) -> ModelOffer:
    """A whole model (`tools`: its chat template declares tool support), or with `span` the
    blocks a pipeline stage holds."""
    if span is None:
        return ModelOffer(
            model_id=model_id,
            model_hash=model_hash,
            quantization=quantization,
            context=context,
            layers=(0, n_layers),
            tools=tools,
        )
    return ModelOffer(
        model_id=model_id,
        model_hash=model_hash,
        quantization=quantization,
        context=context,
        layers=span,
        stage=True,
        n_layers=n_layers,
    )


def load_of(active: int, queued: int) -> Load:
    return Load(active=active, queued=queued)
