"""Records receipts into a ledger as fast as it can, printing each id once committed.

Run as a process and killed with SIGKILL by test_crash: every id it printed must survive.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.ledger._receipts import make_receipt

from dinet.ledger import Ledger
from dinet.wire.keys import SigningKey


def main(home: Path, batch: int) -> None:
    node = SigningKey(b"n" * 32)  # the home's own node identity (written by the test)
    with Ledger.in_home(home) as ledger:
        while True:
            clients = [SigningKey.generate() for _ in range(batch)]
            receipts = [make_receipt(node, c) for c in clients]
            ledger.record_many(receipts) if batch > 1 else ledger.record(receipts[0])
            sys.stdout.write("".join(r.receipt_id + "\n" for r in receipts))
            sys.stdout.flush()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
