"""Vivaldi network coordinates: guess the round trip to a peer never probed.

Each node holds a point (a small Euclidean vector plus a "height", the time its own
access link adds to every round trip) and an error estimate. Every measured round trip
to a peer whose coordinates are known moves the point a little, like a spring between
the two points relaxing towards the measured length. After enough samples the distance
between two nodes' coordinates predicts their round trip (Dabek et al., "Vivaldi: A
Decentralized Network Coordinate System", SIGCOMM 2004, with the height vectors of
section 5.5).

The adaptive timestep weighs a sample by how sure each side is: a node with a large
error moves a lot on a sample from a confident peer and hardly at all on one from an
unsure peer. Two constants tune it:

- `CC` (0.25): the largest fraction of the spring's tension applied per sample; a
  smaller value converges slower and oscillates less.
- `CE` (0.25): how fast the error estimate follows the relative error of new samples.

Input from the network is not trusted: a round trip that is not a finite positive
number under `MAX_RTT_MS`, or remote coordinates with the wrong size, non-finite or
out-of-range values, are ignored. Once a node is confident (error under
`CONFIDENT_ERROR`), a sample whose prediction is off by more than `OUTLIER_ERROR` times
the measurement is dropped, unless most of the last `OUTLIER_WINDOW` samples are (then
the network changed and the node follows). And one sample never moves the point farther
than the round trip it measured, so a peer lying within those bounds drags an honest
node a bounded step per sample, which its honest samples pull back.

Sans-IO: no clock, no I/O; the only randomness (a direction to push two coincident
points apart) comes from the injected `random.Random`.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass

DIMENSIONS = 4
CC = 0.25  # timestep: the share of the spring's tension applied by one sample
CE = 0.25  # how fast the local error follows the error of new samples
INITIAL_ERROR = 1.5  # a new node knows nothing: the largest error
MAX_ERROR = 1.5
MIN_ERROR = 0.01  # a peer claiming more certainty than this is taken at this
MIN_HEIGHT_MS = 0.01  # a height of 0 would stop height updates (they scale with it)
MAX_RTT_MS = 60_000.0  # a longer "round trip" is a broken measurement
MAX_COORDINATE_MS = 100_000.0  # bound on each vector component and on the height
CONFIDENT_ERROR = 0.5  # below this local error, a wildly wrong sample is suspect ...
OUTLIER_ERROR = 3.0  # ... when the prediction is off by more than 3x the measurement ...
OUTLIER_WINDOW = 16  # ... unless most recent samples are (then we are the one out of place)


@dataclass(frozen=True)
class Coordinates:
    """A point in the latency space: `vector` and `height` in milliseconds."""

    vector: tuple[float, ...]
    height: float
    error: float

    @classmethod
    def origin(cls, dimensions: int = DIMENSIONS) -> Coordinates:
        return cls((0.0,) * dimensions, MIN_HEIGHT_MS, INITIAL_ERROR)

    def plausible(self, dimensions: int = DIMENSIONS) -> bool:
        """Whether these coordinates are of the right size with finite, bounded values."""
        if len(self.vector) != dimensions:
            return False
        if not all(_finite_within(v, -MAX_COORDINATE_MS, MAX_COORDINATE_MS) for v in self.vector):
            return False
        return _finite_within(self.height, 0.0, MAX_COORDINATE_MS) and _finite_within(
            self.error, 0.0, math.inf
        )


def estimate_rtt_ms(a: Coordinates, b: Coordinates) -> float:
    """The round trip between two nodes that their coordinates predict."""
    return math.dist(a.vector, b.vector) + a.height + b.height


class Vivaldi:
    """One node's coordinates, refined by each measured round trip."""

    estimate_rtt_ms = staticmethod(estimate_rtt_ms)

    def __init__(self, rng: random.Random, *, dimensions: int = DIMENSIONS) -> None:
        self._rng = rng
        self._dimensions = dimensions
        self._coordinates = Coordinates.origin(dimensions)
        self._recent_outliers: deque[bool] = deque(maxlen=OUTLIER_WINDOW)

    @property
    def coordinates(self) -> Coordinates:
        return self._coordinates

    def update(self, remote: Coordinates, rtt_ms: float) -> bool:
        """Take one sample: `rtt_ms` measured to a node at `remote`.

        Returns False (state unchanged) when the sample is not believable.
        """
        if not _finite_within(rtt_ms, 0.0, MAX_RTT_MS) or rtt_ms <= 0.0:
            return False
        if not remote.plausible(self._dimensions):
            return False
        local = self._coordinates
        remote_error = max(remote.error, MIN_ERROR)
        weight = local.error / (local.error + remote_error)
        predicted = estimate_rtt_ms(local, remote)
        relative_error = abs(predicted - rtt_ms) / rtt_ms
        if self._suspect(local, relative_error):
            return False
        sample_error = min(relative_error, MAX_ERROR)
        error = sample_error * CE * weight + local.error * (1.0 - CE * weight)
        # Positive force pushes away from the remote (we are predicted too near).
        force = CC * weight * (rtt_ms - predicted)
        force = max(-rtt_ms, min(rtt_ms, force))
        moved = self._pushed(local, remote, force)
        if moved is None:
            return False
        self._coordinates = Coordinates(moved[0], moved[1], min(max(error, MIN_ERROR), MAX_ERROR))
        return True

    def _suspect(self, local: Coordinates, relative_error: float) -> bool:
        """Whether to drop a sample that contradicts confident coordinates.

        A peer lying about its coordinates shows up as such a sample. When most recent
        samples contradict us, the network changed under us and we follow it.
        """
        outlier = local.error < CONFIDENT_ERROR and relative_error > OUTLIER_ERROR
        self._recent_outliers.append(outlier)
        return outlier and sum(self._recent_outliers) <= OUTLIER_WINDOW // 2

    def _pushed(
        self, local: Coordinates, remote: Coordinates, force: float
    ) -> tuple[tuple[float, ...], float] | None:
        """`local` moved by `force` along the line from `remote`; None if out of range."""
        offset = [a - b for a, b in zip(local.vector, remote.vector, strict=True)]
        distance = math.hypot(*offset)
        if distance == 0.0:
            # Coincident points (new nodes at the origin): split them in a random direction.
            unit = _random_unit(self._rng, self._dimensions)
            planar_share, height_share = 1.0, 0.0
        else:
            # The heights are part of the spring's length: they take their share of the
            # push (the paper's height vectors), the plane takes the rest.
            unit = [d / distance for d in offset]
            span = distance + local.height + remote.height
            planar_share, height_share = distance / span, (local.height + remote.height) / span
        vector = tuple(a + force * planar_share * u for a, u in zip(local.vector, unit, strict=True))
        height = max(MIN_HEIGHT_MS, local.height + force * height_share)
        moved = Coordinates(vector, height, local.error)
        return (vector, height) if moved.plausible(self._dimensions) else None


def _random_unit(rng: random.Random, dimensions: int) -> list[float]:
    while True:
        direction = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
        length = math.hypot(*direction)
        if length > 1e-9:
            return [d / length for d in direction]


def _finite_within(value: float, low: float, high: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and low <= value <= high
