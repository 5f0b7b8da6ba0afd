"""A FAKE network of many peers for the page's tests: manifests of generated identities,
validly signed, of peers that do not run. No test here is about discovery; they are
about what the gateway and its page make of a network this big.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter
from dataclasses import dataclass

from dinet.client.network import Network
from dinet.gateway._peers import NetworkView
from dinet.p2p.host import LinkKind
from dinet.wire.ids import ModelHash, PeerId
from dinet.wire.keys import SEED_SIZE, SigningKey
from dinet.wire.manifest import Load, Manifest, ModelOffer, SignedManifest, sign_manifest, verify_manifest

REGIONS = ("eu-west", "eu-central", "us-east", "us-west", "ap-south", "ap-northeast")
WHOLE_MODELS = ("llama-3.1-8b-instruct", "qwen2.5-7b-instruct", "mistral-7b-instruct", "phi-3-mini")
CHAIN_MODEL = "llama-3.1-70b-instruct"  # served in two pipeline stages
CHAIN_LAYERS = 80
LIFETIME_S = 290.0  # manifests may live 10 TTLs (300 s): long enough for a page test


@dataclass(frozen=True)
class FakePeer:
    signed: SignedManifest
    region: str
    model: str  # "" for a peer serving no model
    link: LinkKind | None  # how the fake gateway says it reaches the peer
    stage: int | None = None  # 0 or 1 for CHAIN_MODEL's stages

    @property
    def peer_id(self) -> PeerId:
        return Manifest.model_validate_json(self.signed.body).peer_id


def _offer(model: str, stage: int | None) -> ModelOffer:
    digest = ModelHash(hashlib.sha256(model.encode()).hexdigest())
    if stage is None:
        return ModelOffer(
            model_id=model, model_hash=digest, quantization="Q4_K_M", context=8192, layers=(0, 32)
        )
    half = CHAIN_LAYERS // 2
    return ModelOffer(
        model_id=model,
        model_hash=digest,
        quantization="Q4_K_M",
        context=8192,
        layers=(stage * half, (stage + 1) * half),
        stage=True,
        n_layers=CHAIN_LAYERS,
    )


def fake_peers(count: int, seed: int = 20, now: float | None = None) -> list[FakePeer]:
    """`count` peers with uneven regions and models (a few serve none, some are chain
    stages), about a fifth behind NAT and reached through a relay, a tenth not connected."""
    rng = random.Random(seed)
    now = time.time() if now is None else now
    models = (*WHOLE_MODELS, CHAIN_MODEL, "")
    peers = []
    for _ in range(count):
        key = SigningKey(rng.randbytes(SEED_SIZE))
        region = rng.choices(REGIONS, weights=(5, 3, 6, 2, 2, 1))[0]
        model = rng.choices(models, weights=(6, 4, 3, 2, 2, 0.5))[0]
        stage = rng.randrange(2) if model == CHAIN_MODEL else None
        roll = rng.random()
        link: LinkKind | None = "relayed" if roll < 0.2 else None if roll < 0.3 else "direct"
        manifest = Manifest(
            peer_id=key.peer_id,
            version="0.1.0",
            region=region,
            addrs=(f"/ip4/10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}/tcp/4001",),
            models=() if not model else (_offer(model, stage),),
            max_concurrent=4,
            tokens_per_s=round(rng.uniform(5, 60), 1),
            ttft_ms=round(rng.uniform(40, 900), 1),
            price_per_token=0.0,
            load=Load(active=rng.randrange(5), queued=0),
            issued_at=now,
            expires_at=now + LIFETIME_S,
            reach="private" if link == "relayed" else "public",
        )
        peers.append(FakePeer(sign_manifest(manifest, key), region, model, link, stage))
    return peers


def fake_chains(peers: list[FakePeer], count: int) -> list[tuple[PeerId, PeerId]]:
    """`count` chains of CHAIN_MODEL's two stages, each stage 0 with a stage 1 of another
    region when there is one: chains a gateway could have used."""
    firsts = [p for p in peers if p.stage == 0]
    seconds = [p for p in peers if p.stage == 1]
    chains = []
    for first in firsts[:count]:
        second = next((p for p in seconds if p.region != first.region), seconds[0])
        chains.append((first.peer_id, second.peer_id))
    return chains


def expected_groups(peers: list[FakePeer]) -> Counter[tuple[str, str]]:
    """Peers per (region, model), from how they were made."""
    return Counter((p.region, p.model) for p in peers)


class FakeDirectory:
    """Manifests held outside the real (capped) directory, each verified on the way in."""

    def __init__(self, peers: list[FakePeer]) -> None:
        self.manifests = [verify_manifest(p.signed) for p in peers]
        self.links = {m.peer_id: p.link for m, p in zip(self.manifests, peers, strict=True)}


class FakeNetworkView(NetworkView):
    """A real gateway view whose page also sees the fake directory's peers. Requests are
    still routed by the real network's directory, so they never reach a fake peer."""

    def __init__(self, network: Network, bootstrap: list[str], fake: FakeDirectory) -> None:
        super().__init__(network, bootstrap, discover_timeout_s=10.0)
        self.fake = fake

    def manifests(self) -> list[Manifest]:
        return sorted([*self.network.directory.manifests(), *self.fake.manifests], key=lambda m: m.peer_id)

    def link(self, peer_id: PeerId) -> LinkKind | None:
        if peer_id in self.fake.links:
            return self.fake.links[peer_id]
        return super().link(peer_id)
