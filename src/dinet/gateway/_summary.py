"""The network in a few hundred numbers, for the page's drawing: peers grouped by region
and model, how the gateway reaches them, and the chains its answers went through.

Its size grows with the number of groups and chains, not of peers, so the page can
refresh it every few seconds at 1,000 peers and more; the rows of one group come from
`/api/network?region=…&model=…` when asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dinet.gateway._series import ChainUsed
from dinet.p2p.host import LinkKind
from dinet.wire.ids import PeerId
from dinet.wire.manifest import Manifest

NO_MODEL = ""  # the model of the group of peers that serve none (a relay, a bootstrap node)


@dataclass
class _Group:
    region: str
    model: str
    peers: int = 0
    direct: int = 0
    relayed: int = 0
    unlinked: int = 0  # known by manifest, not connected now
    busy: int = 0  # every slot taken
    tokens_per_s: float = 0.0  # summed adverts
    stages: int = 0  # peers serving the model as a pipeline stage
    public: int = 0  # what peers found out about themselves
    private: int = 0

    def add(self, manifest: Manifest, link: LinkKind | None, stage: bool) -> None:
        self.peers += 1
        if link == "direct":
            self.direct += 1
        elif link == "relayed":
            self.relayed += 1
        else:
            self.unlinked += 1
        load = manifest.load
        self.busy += load.active + load.queued >= manifest.max_concurrent
        self.tokens_per_s += manifest.tokens_per_s
        self.stages += stage
        self.public += manifest.reach == "public"
        self.private += manifest.reach == "private"


@dataclass
class _Totals:
    peers: int = 0
    links: dict[str, int] = field(default_factory=lambda: {"direct": 0, "relayed": 0, "none": 0})
    reach: dict[str, int] = field(default_factory=lambda: {"public": 0, "private": 0, "unknown": 0})


def group_keys(manifest: Manifest) -> list[tuple[str, str, bool]]:
    """(region, model id, as a stage) for each model the peer serves, or one NO_MODEL
    group: a peer serving two models is drawn in both groups."""
    if not manifest.models:
        return [(manifest.region, NO_MODEL, False)]
    seen: dict[str, bool] = {}
    for offer in manifest.models:
        seen[offer.model_id] = seen.get(offer.model_id, False) or offer.stage
    return [(manifest.region, model, stage) for model, stage in seen.items()]


def summarize(
    manifests: Iterable[Manifest],
    link_of: Callable[[PeerId], LinkKind | None],
    chains: list[ChainUsed],
) -> dict[str, object]:
    groups: dict[tuple[str, str], _Group] = {}
    totals = _Totals()
    regions: dict[PeerId, str] = {}  # to place a chain's stages in their groups
    for m in manifests:
        link = link_of(m.peer_id)
        totals.peers += 1
        totals.links[link or "none"] += 1
        totals.reach[m.reach] += 1
        for region, model, stage in group_keys(m):
            groups.setdefault((region, model), _Group(region, model)).add(m, link, stage)
        regions[m.peer_id] = m.region
    return {
        "peers": totals.peers,
        "links": totals.links,
        "reach": totals.reach,
        "groups": [
            {
                "region": g.region,
                "model": g.model,
                "peers": g.peers,
                "direct": g.direct,
                "relayed": g.relayed,
                "unlinked": g.unlinked,
                "busy": g.busy,
                "stages": g.stages,
                "public": g.public,
                "private": g.private,
                "tokens_per_s": round(g.tokens_per_s, 1),
            }
            for _, g in sorted(groups.items())
        ],
        "chains": [
            {
                "model": used.model_id,
                # region None: a stage no longer known (its manifest expired)
                "stages": [{"peer_id": p, "region": regions.get(p)} for p in used.stages],
                "uses": used.uses,
                "last_used_s": round(used.age_s, 1),
            }
            for used in chains
        ],
    }
