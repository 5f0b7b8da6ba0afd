"""What encryption at rest (DINET_HOME_PASSPHRASE) costs a ledger commit.

A sealed ledger lives in memory and is written whole, encrypted, at every commit
(`dinet.sealed_sqlite`), so its cost grows with the file. This fills a ledger to each
size in batches, then times single-receipt commits (as a node records one answer at a
time) in a plain file and in a sealed one, alternated; medians, in ms per commit, with
the file size. Opening the sealed ledger (one scrypt, then decryption) is timed apart.

    .venv/bin/python bench/sealed_ledger.py [--sizes 0,1000,10000] [--commits 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.ledger._receipts

from tests.ledger._receipts import make_receipt  # noqa: E402

from dinet import home_crypto  # noqa: E402
from dinet.home_crypto import PASSPHRASE_ENV  # noqa: E402
from dinet.ledger import Ledger  # noqa: E402
from dinet.wire.keys import SigningKey  # noqa: E402

NODE = SigningKey(b"b" * 32)
CLIENTS = [SigningKey.generate() for _ in range(16)]


def receipts(n: int) -> list:
    return [make_receipt(NODE, CLIENTS[i % len(CLIENTS)]) for i in range(n)]


def fill(home: Path, size: int) -> None:
    with Ledger.in_home(home) as ledger:
        batch = receipts(size)
        for start in range(0, size, 500):
            ledger.record_many(batch[start : start + 500])


def time_commits(home: Path, commits: int) -> list[float]:
    todo = receipts(commits)
    with Ledger.in_home(home) as ledger:
        took = []
        for receipt in todo:
            start = time.perf_counter()
            ledger.record(receipt)
            took.append((time.perf_counter() - start) * 1e3)
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="0,1000,10000")
    parser.add_argument("--commits", type=int, default=30)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            plain, sealed = Path(tmp) / f"plain-{size}", Path(tmp) / f"sealed-{size}"
            os.environ.pop(PASSPHRASE_ENV, None)
            fill(plain, size)
            os.environ[PASSPHRASE_ENV] = "bench passphrase"
            fill(sealed, size)
            home_crypto._keys.clear()  # time the key derivation a fresh process does
            start = time.perf_counter()
            Ledger.in_home(sealed).close()
            open_ms = (time.perf_counter() - start) * 1e3
            times: dict[str, list[float]] = {"plain": [], "sealed": []}
            for _ in range(3):  # alternated rounds
                os.environ.pop(PASSPHRASE_ENV, None)
                times["plain"] += time_commits(plain, args.commits // 3)
                os.environ[PASSPHRASE_ENV] = "bench passphrase"
                times["sealed"] += time_commits(sealed, args.commits // 3)
            rows.append(
                {
                    "receipts": size,
                    "file_mb": round((sealed / "ledger.sqlite").stat().st_size / 1e6, 2),
                    "plain_ms": round(statistics.median(times["plain"]), 2),
                    "sealed_ms": round(statistics.median(times["sealed"]), 2),
                    "sealed_open_ms": round(open_ms, 1),
                }
            )
    os.environ.pop(PASSPHRASE_ENV, None)
    print(f"{'receipts':>9} {'file MB':>8} {'plain ms':>9} {'sealed ms':>10} {'open ms':>8}")
    for r in rows:
        cells = (r["receipts"], r["file_mb"], r["plain_ms"], r["sealed_ms"], r["sealed_open_ms"])
        print("{:>9} {:>8} {:>9} {:>10} {:>8}".format(*cells))
    print(json.dumps({"bench": "sealed_ledger", "rows": rows}))


if __name__ == "__main__":
    main()
