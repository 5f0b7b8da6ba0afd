from dinet.routing.select import PeerView, rank_peers


def view(peer_id, rtt=1.0, tps=50.0, ttft=20.0, active=0, queued=0, slots=1):
    return PeerView(peer_id, rtt, tps, ttft, active, queued, slots)


def test_faster_idle_peer_wins():
    ranked = rank_peers([view("slow", tps=20), view("fast", tps=90)], max_tokens=128)
    assert [p.peer_id for p in ranked] == ["fast", "slow"]


def test_a_busy_fast_peer_loses_to_an_idle_one_of_similar_speed():
    ranked = rank_peers([view("busy", tps=90, active=1, queued=2), view("idle", tps=70)], 128)
    assert ranked[0].peer_id == "idle"


def test_a_far_peer_loses_on_short_requests():
    ranked = rank_peers([view("far", rtt=300, tps=100), view("near", rtt=1, tps=60)], max_tokens=4)
    assert ranked[0].peer_id == "near"


def test_ties_are_broken_by_peer_id():
    assert [p.peer_id for p in rank_peers([view("b"), view("a")], 16)] == ["a", "b"]
