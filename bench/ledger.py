"""How long the ledger takes to record and to verify many countersigned receipts.

Signs N receipts (node key signs, client key countersigns), records them in a fresh
SQLite ledger one transaction per receipt (as a node does, one answer at a time) or
in batches, then runs `din ledger verify` over the file, which re-checks both
signatures of every receipt and every sum.

    .venv/bin/python bench/ledger.py [--receipts 10000] [--batch 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dinet.ledger import Ledger
from dinet.wire.keys import SigningKey
from dinet.wire.receipt import ReceiptBody, charge, countersign, output_hash, sign_receipt


def receipts(n: int) -> list:
    node = SigningKey(b"b" * 32)
    clients = [SigningKey.generate() for _ in range(32)]
    out = []
    for i in range(n):
        client = clients[i % len(clients)]
        body = ReceiptBody(
            request_id=f"req-{i}",
            request_hash="ab" * 32,
            model_hash="cd" * 32,
            node=node.peer_id,
            client=client.peer_id,
            prompt_tokens=30,
            completion_tokens=1 + i % 128,
            first_index=0,
            price_per_prompt_token=1e-6,
            price_per_token=2e-5,
            amount=charge(30, 1 + i % 128, 1e-6, 2e-5),
            output_hash=output_hash(range(1 + i % 128)),
            issued_at=time.time(),
        )
        out.append(countersign(sign_receipt(body, node), client))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--receipts", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    t0 = time.perf_counter()
    made = receipts(args.receipts)
    signed_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        (home / "identity.key").write_bytes(b"b" * 32)
        t0 = time.perf_counter()
        with Ledger.in_home(home) as ledger:
            for start in range(0, len(made), args.batch):
                chunk = made[start : start + args.batch]
                ledger.record(chunk[0]) if len(chunk) == 1 else ledger.record_many(chunk)
        record_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "dinet", "ledger", "verify", "--json", "--home", tmp],
            capture_output=True,
            text=True,
            check=True,
        )
        verify_cli_s = time.perf_counter() - t0
        report = json.loads(done.stdout)
        size = (home / "ledger.sqlite").stat().st_size
    print(
        json.dumps(
            {
                "receipts": args.receipts,
                "batch": args.batch,
                "sign_and_countersign_s": round(signed_s, 2),
                "record_s": round(record_s, 2),
                "record_per_s": round(args.receipts / record_s),
                "verify_s": report["seconds"],
                "verify_cli_total_s": round(verify_cli_s, 2),
                "verified": report["receipts"],
                "ok": report["ok"],
                "file_mb": round(size / 1e6, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
