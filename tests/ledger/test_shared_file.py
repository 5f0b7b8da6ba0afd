"""Several connections to one ledger in a process, and another process opening and closing
it, as `din ledger` does beside a running node: every commit stays visible and durable."""

from __future__ import annotations

import subprocess
import sys

from dinet.ledger import Ledger
from dinet.ledger.store import ChannelRecord
from dinet.wire.ids import PeerId


def record(ledger: Ledger, n: int) -> None:
    ledger.add_channel(
        ChannelRecord(f"0x{n:064x}", 1337, "0x" + "1" * 40, PeerId("a"), PeerId("b"), "0x" + "2" * 40, 0.0)
    )


def channels_seen_elsewhere(path) -> int:
    code = (
        "import sys, pathlib; from dinet.ledger import Ledger; "
        "print(len(Ledger(pathlib.Path(sys.argv[1])).channels()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60, check=True
    )
    return int(done.stdout)


def test_a_second_connection_and_another_process_leave_the_wal_in_place(tmp_path):
    first = Ledger.in_home(tmp_path)
    record(first, 1)
    second = Ledger.in_home(tmp_path)  # a node opens one per accountant, and its payment desk
    record(second, 2)
    assert channels_seen_elsewhere(first.path) == 2  # another process opens and closes the file
    record(first, 3)
    assert (tmp_path / "ledger.sqlite-wal").exists()
    assert channels_seen_elsewhere(first.path) == 3  # (was 2: the WAL had been deleted under us)
    first.close()
    second.close()
