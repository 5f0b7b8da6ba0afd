"""How fast the NAT lab's user-space WAN link carries a bulk TCP transfer.

In a fresh NatLab, pub1 sends SIZE bytes to a1 (a pull into home A, across the wan router
and home A's NAT) over one TCP connection, for each WAN setting: plain kernel forwarding
(the emulator bypassed), the emulator with no delay, and with delay and loss. Runs
alternate between settings; medians. Prints a table, then one JSON line. Needs root.

    .venv/bin/python bench/wan_link.py [--runs 3] [--size-mb 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for tests.lab

from tests.lab import probe  # noqa: E402
from tests.lab.nat import NatLab  # noqa: E402

PORT = 4100
SETTINGS = [  # (label, delay_ms, loss, bypass)
    ("kernel (bypass)", 0.0, 0.0, True),
    ("emulator, 0 ms", 0.0, 0.0, False),
    ("emulator, 5 ms", 5.0, 0.0, False),
    ("emulator, 20 ms", 20.0, 0.0, False),
    ("emulator, 20 ms, 0.1% loss", 20.0, 0.001, False),
    ("emulator, 0 ms, 1% loss", 0.0, 0.01, False),
]


def transfer(lab: NatLab, size: int) -> tuple[float, float]:
    """(MB/s, connect ms) of one transfer pub1 -> a1."""
    done = lab.run(
        "a1",
        probe.argv("connect", lab.addr("pub1"), PORT, f"zeros {size}", "--timeout=300"),
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout)
    if not result["ok"] or result["bytes"] != size:
        raise RuntimeError(f"transfer failed: {result}")
    return size / 1e6 / (result["transfer_ms"] / 1000.0), result["connect_ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=100)
    args = parser.parse_args()
    size = args.size_mb * 1_000_000
    rates: dict[str, list[float]] = {label: [] for label, *_ in SETTINGS}
    connects: dict[str, list[float]] = {label: [] for label, *_ in SETTINGS}
    cpu: dict[str, float] = {label: 0.0 for label, *_ in SETTINGS}
    with NatLab() as lab:
        server = lab.popen(
            "pub1", probe.argv("serve", PORT), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        probe.read_json_line(server, 30)
        for _ in range(args.runs):
            for label, delay_ms, loss, bypass in SETTINGS:
                lab.set_wan(delay_ms, loss, bypass=bypass)
                before = lab.wan_link_stats().get("cpu_s", 0.0)
                rate, connect_ms = transfer(lab, size)
                cpu[label] += lab.wan_link_stats().get("cpu_s", 0.0) - before
                rates[label].append(rate)
                connects[label].append(connect_ms)
    rows = []
    print(f"{'WAN setting':<28} {'MB/s':>8} {'connect ms':>11} {'emulator CPU s/GB':>18}")
    for label, *_ in SETTINGS:
        row = {
            "setting": label,
            "mb_per_s": round(statistics.median(rates[label]), 1),
            "connect_ms": round(statistics.median(connects[label]), 2),
            "emulator_cpu_s_per_gb": round(cpu[label] / (args.runs * size / 1e9), 2),
        }
        rows.append(row)
        print(f"{label:<28} {row['mb_per_s']:>8} {row['connect_ms']:>11} {row['emulator_cpu_s_per_gb']:>18}")
    print(json.dumps({"bench": "wan_link", "size_mb": args.size_mb, "runs": args.runs, "rows": rows}))


if __name__ == "__main__":
    main()
