import math
import random
import statistics

import pytest

from dinet.overlay.vivaldi import MAX_RTT_MS, Coordinates, Vivaldi, estimate_rtt_ms


def synthetic_network(n, rng):
    """Round trips between `n` hosts: points in a 300 ms wide plane plus access-link heights."""
    points = [(rng.uniform(0, 300), rng.uniform(0, 300)) for _ in range(n)]
    heights = [rng.uniform(1, 20) for _ in range(n)]

    def rtt(i, j):
        return math.dist(points[i], points[j]) + heights[i] + heights[j]

    return rtt


def converge(cores, rtt, rng, rounds, noise=0.0):
    n = len(cores)
    for _ in range(rounds):
        for i, core in enumerate(cores):
            j = rng.randrange(n - 1)
            j += j >= i
            measured = rtt(i, j) * (1.0 + rng.uniform(-noise, noise))
            core.update(cores[j].coordinates, measured)


def median_relative_error(cores, rtt, pairs):
    errors = [
        abs(estimate_rtt_ms(cores[i].coordinates, cores[j].coordinates) - rtt(i, j)) / rtt(i, j)
        for i, j in pairs
    ]
    return statistics.median(errors)


def test_estimates_converge_to_the_measured_round_trips():
    rng = random.Random(7)
    n = 40
    rtt = synthetic_network(n, rng)
    cores = [Vivaldi(random.Random(i)) for i in range(n)]
    pairs = [(i, j) for i in range(n) for j in range(n) if i < j]
    before = median_relative_error(cores, rtt, pairs)
    converge(cores, rtt, rng, rounds=300, noise=0.05)
    after = median_relative_error(cores, rtt, pairs)
    # Every pair is estimated, including the ~97% never measured directly.
    assert before > 0.9
    assert after < 0.12
    # The nodes' own error estimates came down with the actual error.
    assert statistics.median(c.coordinates.error for c in cores) < 0.5


def test_a_liar_with_absurd_coordinates_does_not_wreck_an_honest_node():
    rng = random.Random(11)
    n = 30
    rtt = synthetic_network(n, rng)
    cores = [Vivaldi(random.Random(i)) for i in range(n)]
    converge(cores, rtt, rng, rounds=300)
    honest = cores[0]
    others = [(0, j) for j in range(1, n)]
    settled = median_relative_error(cores, rtt, others)
    # A peer 50 ms away claims to sit at the far edge of the space with total certainty.
    liar = Coordinates((90_000.0, -90_000.0, 90_000.0, 90_000.0), 90_000.0, 0.0)
    for _ in range(200):
        honest.update(liar, 50.0)
        j = rng.randrange(1, n)
        honest.update(cores[j].coordinates, rtt(0, j))
    # Its samples contradict the settled coordinates so plainly that they are dropped.
    assert median_relative_error(cores, rtt, others) < max(2 * settled, 0.05)
    assert all(abs(v) < 1_000 for v in honest.coordinates.vector)


@pytest.mark.parametrize("rtt_ms", [-5.0, 0.0, math.nan, math.inf, MAX_RTT_MS * 2])
def test_a_broken_round_trip_is_ignored(rtt_ms):
    core = Vivaldi(random.Random(1))
    core.update(Coordinates((10.0, 0.0, 0.0, 0.0), 1.0, 0.2), 40.0)
    before = core.coordinates
    assert core.update(Coordinates((0.0, 5.0, 0.0, 0.0), 1.0, 0.2), rtt_ms) is False
    assert core.coordinates == before


@pytest.mark.parametrize(
    "remote",
    [
        Coordinates((1.0, 2.0), 1.0, 0.2),  # wrong size
        Coordinates((math.nan, 0.0, 0.0, 0.0), 1.0, 0.2),
        Coordinates((math.inf, 0.0, 0.0, 0.0), 1.0, 0.2),
        Coordinates((1e12, 0.0, 0.0, 0.0), 1.0, 0.2),
        Coordinates((1.0, 0.0, 0.0, 0.0), -3.0, 0.2),
        Coordinates((1.0, 0.0, 0.0, 0.0), math.nan, 0.2),
        Coordinates((1.0, 0.0, 0.0, 0.0), 1.0, math.nan),
        Coordinates((1.0, 0.0, 0.0, 0.0), 1.0, -1.0),
    ],
)
def test_impossible_remote_coordinates_are_ignored(remote):
    core = Vivaldi(random.Random(1))
    before = core.coordinates
    assert core.update(remote, 40.0) is False
    assert core.coordinates == before


def test_two_new_nodes_at_the_same_point_move_apart():
    a, b = Vivaldi(random.Random(1)), Vivaldi(random.Random(2))
    for _ in range(50):
        a.update(b.coordinates, 80.0)
        b.update(a.coordinates, 80.0)
    assert estimate_rtt_ms(a.coordinates, b.coordinates) == pytest.approx(80.0, rel=0.1)


def test_a_subtle_liar_costs_little_accuracy():
    rng = random.Random(5)
    n = 30
    rtt = synthetic_network(n, rng)
    cores = [Vivaldi(random.Random(i)) for i in range(n)]
    converge(cores, rtt, rng, rounds=300)
    honest = cores[0]
    others = [(0, j) for j in range(1, n)]
    # Just inside the outlier bound: it claims to be 3x farther than it is, every fifth sample.
    true_position = cores[1].coordinates
    shifted = tuple(v + 100.0 for v in true_position.vector)
    liar = Coordinates(shifted, true_position.height, 0.01)
    for step in range(500):
        j = rng.randrange(1, n)
        if step % 5 == 0:
            honest.update(liar, rtt(0, 1))
        else:
            honest.update(cores[j].coordinates, rtt(0, j))
    assert median_relative_error(cores, rtt, others) < 0.3


def test_a_node_follows_when_the_whole_network_moves():
    rng = random.Random(3)
    n = 20
    rtt = synthetic_network(n, rng)
    cores = [Vivaldi(random.Random(i)) for i in range(n)]
    converge(cores, rtt, rng, rounds=200)
    # Node 0 moves far away: every round trip it measures grows by 1,000 ms.
    moved = lambda i, j: rtt(i, j) + (1_000.0 if 0 in (i, j) else 0.0)  # noqa: E731
    converge(cores, moved, rng, rounds=300)
    others = [(0, j) for j in range(1, n)]
    assert median_relative_error(cores, moved, others) < 0.15
