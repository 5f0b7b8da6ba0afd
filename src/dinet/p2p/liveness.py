"""Noticing dead peers quickly, and noticing when they come back.

Every peer in use (`watched`: the candidates a client is about to choose among and
those it is using) is asked for its own manifest every `interval` seconds (a ping
that also refreshes its load figures). A peer that misses `misses_allowed + 1`
probes in a row leaves the directory; its last manifest is kept aside so it can
still be probed, less and less often, and it returns the moment it answers.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

import trio

from dinet.errors import DinetError
from dinet.p2p.directory import PeerDirectory
from dinet.p2p.discovery import fetch_manifests
from dinet.p2p.host import DIAL_TIMEOUT_S, PeerHost
from dinet.wire.ids import PeerId
from dinet.wire.manifest import Manifest

logger = logging.getLogger(__name__)

PROBE_INTERVAL_S = 1.0
# A probe opens a stream and asks one question: ~3 round trips, each maybe ~300 ms between
# continents, twice that through a relay. Was 1.5 s, which only loopback and LANs meet.
PROBE_TIMEOUT_S = 3.0
MAX_RETRY_S = 30.0

OnProbe = Callable[[PeerId, float | None], None]  # peer id, round trip in ms or None if it failed


@dataclass
class _Absent:
    manifest: Manifest
    retry_at: float
    wait_s: float = PROBE_INTERVAL_S


@dataclass
class LivenessWatch:
    host: PeerHost
    directory: PeerDirectory
    on_probe: OnProbe = lambda peer_id, rtt: None
    interval: float = PROBE_INTERVAL_S
    timeout: float = PROBE_TIMEOUT_S  # one probe of a connected peer
    dial_timeout: float = DIAL_TIMEOUT_S  # dialing an absent peer again: a new (maybe relayed) connection
    misses_allowed: int = 1
    lull: Callable[[], Awaitable[None]] | None = None  # awaited before each round (a node's chores)
    # Peers left out of a round: a session or request open with them shows they are alive, and a
    # probe would take a core from the step they are computing for us.
    resting: Callable[[PeerId], bool] = lambda peer_id: False
    # The peers to probe; every peer in the directory when None (a small mesh's tests).
    watched: Callable[[], Collection[PeerId]] | None = None
    _misses: dict[str, int] = field(default_factory=dict)
    absent: dict[PeerId, _Absent] = field(default_factory=dict)

    def is_absent(self, peer_id: PeerId) -> bool:
        return peer_id in self.absent

    async def run(self) -> None:
        while True:
            if self.lull is not None:
                await self.lull()
            now = trio.current_time()
            watched = self.watched() if self.watched is not None else None
            present = [
                m.peer_id
                for m in self.directory.manifests()
                if not self.resting(m.peer_id) and (watched is None or m.peer_id in watched)
            ]
            # One peer a round also shares what it knows: peers that joined or moved.
            sharer = random.choice(present) if present else None
            async with trio.open_nursery() as nursery:
                for peer_id in present:
                    nursery.start_soon(self._probe_present, peer_id, peer_id == sharer)
                for peer_id, entry in list(self.absent.items()):
                    if watched is not None and peer_id not in watched:
                        del self.absent[peer_id]  # no longer in use: nobody needs to know it came back
                    elif entry.retry_at <= now:
                        nursery.start_soon(self._probe_absent, peer_id, entry)
            await trio.sleep(self.interval)

    async def _probe(self, peer_id: PeerId, share: bool = False) -> float | None:
        try:
            signed, rtt_ms = await fetch_manifests(
                self.host, peer_id, include_known=share, timeout=self.timeout
            )
            self.directory.add_from(peer_id, signed)
            return rtt_ms
        except DinetError as exc:
            logger.debug("probe of %s failed: %s", peer_id, exc)
            return None

    async def _probe_present(self, peer_id: PeerId, share: bool) -> None:
        manifest = self.directory.get(peer_id)
        rtt_ms = await self._probe(peer_id, share)
        self.on_probe(peer_id, rtt_ms)
        if rtt_ms is not None:
            self._misses.pop(peer_id, None)
            return
        misses = self._misses.get(peer_id, 0) + 1
        self._misses[peer_id] = misses
        if misses > self.misses_allowed and manifest is not None:
            logger.info("peer %s stopped answering; dropping it from the directory", peer_id)
            self.directory.remove(peer_id, dead=True)
            self._misses.pop(peer_id, None)
            self.absent[peer_id] = _Absent(manifest, trio.current_time() + self.interval)

    async def _probe_absent(self, peer_id: PeerId, entry: _Absent) -> None:
        manifest = entry.manifest
        reached = await self.host.reach(peer_id, manifest.addrs, timeout=self.dial_timeout)
        if not reached or (rtt_ms := await self._probe(peer_id)) is None:
            entry.wait_s = min(entry.wait_s * 2, MAX_RETRY_S)
            entry.retry_at = trio.current_time() + entry.wait_s
            return
        logger.info("peer %s answers again", peer_id)
        self.absent.pop(peer_id, None)
        self.on_probe(peer_id, rtt_ms)
