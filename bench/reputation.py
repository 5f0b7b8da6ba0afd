"""What keeping reputations costs a client, and how fast the formula catches a liar.

1. Writes: N events into a fresh reputation file, one transaction per answer (as
   `ask` records them) and per vote (three events in one transaction), then the full
   self-check (`Reputation.check`) over the file.
2. Reads: one routing decision among P peers that all have a reputation
   (standings decayed to now, exclusion, ranking), against the same without.
3. The formula alone (no network): over R simulated voted rounds with one liar among
   3 peers and honest peers that fail a fraction of their answers, the round at which
   the liar is excluded and whether any honest peer ever is.

    .venv/bin/python bench/reputation.py [--events 10000] [--peers 1000]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from dinet.routing.select import PeerView, rank_peers, trusted
from dinet.trust import Event, Reputation


def writes(home: Path, n: int) -> dict[str, float]:
    peers = [f"12D3KooWpeer{i:04d}" for i in range(50)]
    rng = random.Random(1)
    with Reputation.in_home(home) as book:
        t0 = time.perf_counter()
        for _ in range(n):
            book.record(rng.choice(peers), Event.SUCCESS)
        single_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(n // 3):
            book.record_many([(rng.choice(peers), Event.VOTE_AGREE) for _ in range(3)])
        vote_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        problems = book.check()
        check_s = time.perf_counter() - t0
    return {
        "record_per_s": round(n / single_s),
        "vote_per_s": round((n // 3) / vote_s),
        "check_s": round(check_s, 3),
        "check_ok": not problems,
    }


def reads(home: Path, peers: int) -> dict[str, float]:
    ids = [f"12D3KooWread{i:05d}" for i in range(peers)]
    rng = random.Random(2)
    with Reputation.in_home(home) as book:
        book.record_many([(p, rng.choice(list(Event))) for p in ids for _ in range(3)])
        speeds = {p: rng.uniform(20, 100) for p in ids}

        def decide(with_reputation: bool) -> float:
            # As `Network.candidates` then `ask` do: build the views, drop the excluded, rank.
            t0 = time.perf_counter()
            standings = book.standings() if with_reputation else {}
            views = []
            for p in ids:
                s = standings.get(p)
                views.append(
                    PeerView(
                        p,
                        1.0,
                        speeds[p],
                        40.0,
                        0,
                        0,
                        1,
                        reputation=None if s is None else s.score,
                        evidence=0.0 if s is None else s.events,
                    )
                )
            rank_peers(trusted(views) if with_reputation else views, 128, limit=1)
            return time.perf_counter() - t0

        runs = 50
        plain = sorted(decide(False) for _ in range(runs))[runs // 2]
        judged = sorted(decide(True) for _ in range(runs))[runs // 2]
    return {"decision_ms": round(plain * 1e3, 3), "decision_with_reputation_ms": round(judged * 1e3, 3)}


def simulated_votes(home: Path, rounds: int, fail_rate: float, seed: int) -> dict[str, object]:
    """One liar and two honest peers voting every round; honest peers fail `fail_rate` of answers."""
    rng = random.Random(seed)
    honest, liar = ["honest-a", "honest-b"], "liar"
    excluded_at: int | None = None
    false_positives = 0
    with Reputation(home / f"sim-{seed}.sqlite") as book:
        for r in range(rounds):
            now = 1.8e9 + 60.0 * r
            views = {p: book.standing(p, now=now) for p in [*honest, liar]}
            usable = {
                v.peer_id
                for v in trusted(
                    [
                        PeerView(
                            p,
                            1.0,
                            50.0,
                            40.0,
                            0,
                            0,
                            1,
                            reputation=None if s is None else s.score,
                            evidence=0.0 if s is None else s.events,
                        )
                        for p, s in views.items()
                    ]
                )
            }
            false_positives += sum(p not in usable for p in honest)
            if liar not in usable:
                excluded_at = r if excluded_at is None else excluded_at
            events = []
            answered = [p for p in honest if rng.random() >= fail_rate]
            events += [(p, Event.FAILURE) for p in honest if p not in answered]
            events += [(p, Event.SUCCESS) for p in answered]
            if liar in usable:
                events.append((liar, Event.SUCCESS))
                if answered:  # the honest majority, if it answered, outvotes the liar
                    events += [(p, Event.VOTE_AGREE) for p in answered] + [(liar, Event.VOTE_DISSENT)]
            book.record_many(events, now=now)
    return {
        "fail_rate": fail_rate,
        "liar_excluded_after_rounds": excluded_at,
        "honest_exclusions": false_positives,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        result: dict[str, object] = {"events": args.events, **writes(home / "w", args.events)}
        result.update({"peers": args.peers, **reads(home / "r", args.peers)})
        result["simulated"] = [
            simulated_votes(home, args.rounds, rate, seed) for seed, rate in enumerate((0.0, 0.1, 0.3))
        ]
    for row in result["simulated"]:  # type: ignore[attr-defined]
        print(
            f"honest failure rate {row['fail_rate']:.0%}: liar excluded after "
            f"{row['liar_excluded_after_rounds']} votes, honest exclusions {row['honest_exclusions']}"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
