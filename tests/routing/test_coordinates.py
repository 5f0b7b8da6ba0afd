"""A host's coordinates kept from measured round trips and peers' manifests."""

import random

from tests.helpers import make_manifest

from dinet.routing.coordinates import CoordinateBook
from dinet.routing.select import PeerView, rank_peers
from dinet.wire.keys import SigningKey
from dinet.wire.manifest import Manifest, NetworkCoordinates


def manifest_at(vector, height=2.0, error=0.2) -> Manifest:
    coords = NetworkCoordinates(vector=vector, height=height, error=error)
    return make_manifest(SigningKey.generate(), coords=coords)


def test_a_client_ranks_unprobed_peers_by_the_coordinates_in_their_manifests():
    # Four placed nodes around us (we sit near (10, 0)), measured as we meet them.
    probed = [manifest_at((x, y, 0.0, 0.0)) for x, y in ((0, 0), (40, 0), (0, 40), (40, 40))]
    # Two we never probed: one next to us, one far away.
    near, far = manifest_at((12.0, 2.0, 0.0, 0.0)), manifest_at((300.0, 250.0, 0.0, 0.0))
    directory = {m.peer_id: m for m in [*probed, near, far]}
    book = CoordinateBook(directory.get, random.Random(4))
    assert book.estimate_ms(near) is None  # not placed yet: no estimate
    me = (10.0, 0.0)
    for _ in range(60):
        for m in probed:
            x, y = m.coords.vector[:2]
            book.sample(m.peer_id, ((x - me[0]) ** 2 + (y - me[1]) ** 2) ** 0.5 + 2.0 + 1.0)
    assert book.advert() is not None
    estimates = {"near": book.estimate_ms(near), "far": book.estimate_ms(far)}
    assert estimates["near"] < 30 < 300 < estimates["far"]
    views = [
        PeerView(name, None, 50.0, 20.0, 0, 0, 1, estimated_rtt_ms=estimates[name])
        for name in ("far", "near")
    ]
    assert [p.peer_id for p in rank_peers(views, 8)] == ["near", "far"]


def test_samples_from_peers_without_coordinates_only_place_a_new_node():
    unplaced = manifest_at((0.0, 0.0, 0.0, 0.0)).model_copy(update={"coords": None})
    book = CoordinateBook({unplaced.peer_id: unplaced}.get, random.Random(1))
    book.sample(unplaced.peer_id, 20.0)
    assert book.samples == 1  # the first nodes of a network place each other from the origin
    book.sample("nobody-we-know", 20.0)  # no manifest: nothing to place it by
    assert book.samples == 1
