"""Records reputation events as fast as it can, in batches of three (one vote each),
printing the number of events committed so far after each batch.

Run as a process and killed with SIGKILL by test_reputation: what it printed must survive,
and no batch may be found half-written.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from dinet.trust import Event, Reputation

PEERS = [f"12D3KooWpeer{i}" for i in range(5)]
BATCH = 3


def main(home: Path) -> None:
    rng = random.Random(7)
    committed = 0
    with Reputation.in_home(home, half_life_s=60.0) as book:
        while True:
            batch = [(rng.choice(PEERS), rng.choice(list(Event))) for _ in range(BATCH)]
            book.record_many(batch)
            committed += BATCH
            sys.stdout.write(f"{committed}\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
