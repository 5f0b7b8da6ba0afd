"""This host's network coordinates, kept from the round trips it measures anyway.

Node and client alike feed every measured round trip (`PeerHost.note_rtt`) to one
`CoordinateBook`: with the remote's coordinates, taken from its manifest in the
directory, the sample moves ours (dinet.overlay.vivaldi). A node puts its coordinates in its manifest; a
client estimates the round trip to a peer it has never probed from both sides' points.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from dinet.overlay.vivaldi import Coordinates, Vivaldi, estimate_rtt_ms
from dinet.wire.ids import PeerId
from dinet.wire.manifest import Manifest, NetworkCoordinates

TRUSTED_ERROR = 1.0  # coordinates with a larger error say too little to estimate from


class CoordinateBook:
    def __init__(
        self, manifest_of: Callable[[PeerId], Manifest | None], rng: random.Random | None = None
    ) -> None:
        self._manifest_of = manifest_of
        self._vivaldi = Vivaldi(rng or random.Random())
        self.samples = 0  # samples taken: before the first, the coordinates mean nothing

    def sample(self, peer_id: PeerId, rtt_ms: float) -> None:
        """A round trip measured to `peer_id`: moves our point if its manifest gives its own."""
        manifest = self._manifest_of(peer_id)
        if manifest is None:
            return
        if manifest.coords is not None:
            remote = _coordinates(manifest.coords)
        elif self._vivaldi.coordinates.error > TRUSTED_ERROR:
            # An unplaced peer sits at the origin, as every new node does: that is how
            # the first nodes of a network place each other. Once placed, we wait for
            # its coordinates rather than be pulled towards the origin.
            remote = Coordinates.origin()
        else:
            return
        if self._vivaldi.update(remote, rtt_ms):
            self.samples += 1

    def advert(self) -> NetworkCoordinates | None:
        """Our coordinates for the manifest; None until a sample placed them."""
        if not self.samples:
            return None
        own = self._vivaldi.coordinates
        return NetworkCoordinates(vector=own.vector, height=own.height, error=own.error)

    def estimate_ms(self, manifest: Manifest) -> float | None:
        """The round trip to the manifest's node that both points predict, if both are placed."""
        theirs = manifest.coords
        own = self._vivaldi.coordinates
        if not self.samples or theirs is None or max(own.error, theirs.error) > TRUSTED_ERROR:
            return None
        return estimate_rtt_ms(own, _coordinates(theirs))


def placed(manifest: Manifest) -> Coordinates | None:
    """The manifest's node's coordinates, if it gives some trusted enough to estimate from."""
    if manifest.coords is None or manifest.coords.error > TRUSTED_ERROR:
        return None
    return _coordinates(manifest.coords)


def _coordinates(wire: NetworkCoordinates) -> Coordinates:
    return Coordinates(tuple(wire.vector), wire.height, wire.error)
