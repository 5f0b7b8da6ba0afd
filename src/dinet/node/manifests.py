"""A node's side of manifests: build and sign its own, answer queries, follow gossip."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio
from pydantic import ValidationError

from dinet.errors import ManifestError, PeerError, WireError
from dinet.p2p.directory import PeerDirectory
from dinet.p2p.host import PeerHost
from dinet.p2p.streams import FramedStream, Stream
from dinet.wire.ids import MANIFEST_TOPIC, PROTOCOL_VERSION, ModelHash, PeerId
from dinet.wire.keys import Signer
from dinet.wire.manifest import (
    MANIFEST_TTL_S,
    MAX_DIRECTORY,
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


class ManifestPublisher:
    """Builds this node's signed manifest from live figures, and shares the directory."""

    def __init__(
        self,
        key: Signer,
        peer_id: PeerId,
        directory: PeerDirectory,
        describe: Callable[[], dict[str, object]],
    ) -> None:
        self._key = key
        self._peer_id = peer_id
        self.directory = directory
        self._describe = describe  # live fields: addrs, models, load, speed, price ...

    def current(self) -> SignedManifest:
        now = time.time()
        fields = self._describe()
        manifest = Manifest(
            peer_id=self._peer_id,
            version=PROTOCOL_VERSION,
            issued_at=now,
            expires_at=now + MANIFEST_TTL_S,
            **fields,  # type: ignore[arg-type]
        )
        return sign_manifest(manifest, self._key)

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
                manifests += self.directory.signed()[: MAX_DIRECTORY - 1]
            await framed.send(ManifestList(manifests=tuple(manifests)))
        except (trio.TooSlowError, WireError, ValidationError, PeerError) as exc:
            logger.debug("manifest query from %s refused: %s", framed.remote_peer, exc)
            await framed.reset()
            return
        await framed.close()

    async def broadcast(self, host: PeerHost, interval_s: float) -> None:
        """Publish the manifest as a heartbeat, forever (gossip wants a low rate)."""
        while True:
            await host.publish(MANIFEST_TOPIC, self.current().model_dump_json().encode())
            await trio.sleep(interval_s)

    async def follow(self, host: PeerHost, on_new_peer: Callable[[Manifest], None]) -> None:
        """Keep the directory fed from gossip; forged or expired manifests are dropped."""
        subscription = await host.subscribe(MANIFEST_TOPIC)
        while True:
            data = await subscription.get()
            try:
                signed = SignedManifest.model_validate_json(data)
                manifest, is_new = self.directory.add(signed)
            except (ValidationError, ManifestError) as exc:
                logger.info("dropped a gossiped manifest: %s", exc)
                continue
            if is_new and manifest.peer_id != self._peer_id:
                on_new_peer(manifest)


def offer(
    model_id: str,
    model_hash: ModelHash,
    quantization: str,
    context: int,
    n_layers: int,
    span: tuple[int, int] | None = None,
) -> ModelOffer:
    """A whole model, or with `span` the blocks a pipeline stage holds."""
    if span is None:
        return ModelOffer(
            model_id=model_id,
            model_hash=model_hash,
            quantization=quantization,
            context=context,
            layers=(0, n_layers),
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
