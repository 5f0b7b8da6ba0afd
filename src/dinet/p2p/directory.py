"""The verified manifests a process currently knows, newest per peer, expired ones dropped.

It is a cache of candidates, not a list of the world: peers are found by DHT records
and asked for their manifests when a model is wanted, and when the cache is full the
manifest closest to expiry makes room for the new one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from dinet.errors import ManifestError
from dinet.wire.ids import ModelHash, PeerId
from dinet.wire.manifest import Manifest, SignedManifest, serves, verify_manifest

logger = logging.getLogger(__name__)

CACHE_SIZE = 2048  # manifests kept at most (each is at most 16 KB, most ~1.5 KB)


class PeerDirectory:
    def __init__(
        self,
        own_peer_id: PeerId | None = None,
        on_moved: Callable[[Manifest], None] | None = None,
        capacity: int = CACHE_SIZE,
    ) -> None:
        self._own = own_peer_id
        self._capacity = capacity
        # Told when a peer appears or its addresses change, so dialing can follow it.
        self._on_moved = on_moved
        self._entries: dict[PeerId, tuple[Manifest, SignedManifest]] = {}
        # Peers seen dead, with when: others may still pass on their unexpired manifests,
        # which are ignored; only a manifest issued after that moment brings a peer back.
        self.absent: dict[PeerId, float] = {}

    def add(self, signed: SignedManifest, now: float | None = None) -> tuple[Manifest, bool]:
        """Verify and keep `signed` if it is newer than what we hold; ManifestError if invalid.

        Returns the manifest and whether its peer was new to us.
        """
        manifest = verify_manifest(signed, now)
        dead_since = self.absent.get(manifest.peer_id)
        if dead_since is not None:
            if manifest.issued_at <= dead_since:
                return manifest, False
            del self.absent[manifest.peer_id]
        held = self._entries.get(manifest.peer_id)
        if held is None or held[0].issued_at <= manifest.issued_at:
            if held is None and len(self._entries) >= self._capacity:
                self._make_room(now)
            self._entries[manifest.peer_id] = (manifest, signed)
            moved = held is None or held[0].addrs != manifest.addrs
            if moved and self._on_moved is not None and manifest.peer_id != self._own:
                self._on_moved(manifest)
        return manifest, held is None

    def add_from(self, source: PeerId, signed: list[SignedManifest]) -> list[Manifest]:
        """Add every manifest peer `source` passed on; forged or expired ones are logged and
        skipped. Returns the manifests of peers that were new to us."""
        new = []
        for item in signed:
            try:
                manifest, is_new = self.add(item)
            except ManifestError as exc:
                logger.info("peer %s passed on a bad manifest: %s", source, exc)
                continue
            if is_new:
                new.append(manifest)
        return new

    def remove(self, peer_id: PeerId, *, dead: bool = False) -> None:
        self._entries.pop(peer_id, None)
        if dead:
            self.absent[peer_id] = time.time()

    def get(self, peer_id: PeerId) -> Manifest | None:
        entry = self._entries.get(peer_id)
        return entry[0] if entry else None

    def manifests(self, now: float | None = None, *, include_own: bool = False) -> list[Manifest]:
        self._prune(now)
        return [m for m, _ in self._entries.values() if include_own or m.peer_id != self._own]

    def serving(
        self, model_id: str | None, model_hash: ModelHash | None, now: float | None = None
    ) -> list[Manifest]:
        """The peers (not this process) that offer the model, whole or a stage of it; all if
        neither is named."""
        return [m for m in self.manifests(now) if serves(m, model_id, model_hash)]

    def signed_of(self, peer_id: PeerId) -> SignedManifest | None:
        """The signed manifest held of `peer_id`, as it was received."""
        entry = self._entries.get(peer_id)
        return None if entry is None else entry[1]

    def signed(
        self,
        now: float | None = None,
        *,
        model_id: str | None = None,
        model_hash: ModelHash | None = None,
        limit: int | None = None,
    ) -> list[SignedManifest]:
        """The signed manifests held (of peers offering the model, if named), freshest first."""
        self._prune(now)
        held = sorted(self._entries.values(), key=lambda entry: -entry[0].issued_at)
        picked = [s for m, s in held if serves(m, model_id, model_hash)]
        return picked if limit is None else picked[:limit]

    def _make_room(self, now: float | None) -> None:
        self._prune(now)
        while len(self._entries) >= self._capacity:
            soonest = min(self._entries, key=lambda peer_id: self._entries[peer_id][0].expires_at)
            del self._entries[soonest]

    def _prune(self, now: float | None) -> None:
        now = time.time() if now is None else now
        for peer_id in [p for p, (m, _) in self._entries.items() if m.expires_at <= now]:
            del self._entries[peer_id]
