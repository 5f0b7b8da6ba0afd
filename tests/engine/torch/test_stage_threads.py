"""A stage's OpenMP workers run below the node's priority and on cores of their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dinet.engine.torch._stage import WORKER_NICE_STEP

# Loads a stage on a thread, as the node's compute thread does, then reports from that
# thread (its OpenMP workers end with it): each thread's nice value, and which threads
# gained CPU time while it ran a large parallel op.
_PROBE = """
import json, os, sys, threading
from pathlib import Path
from dinet.engine.torch._stage import Stage

def cpu_ticks():
    ticks = {}
    for tid in os.listdir("/proc/self/task"):
        fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        ticks[int(tid)] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks

def probe():
    Stage.load(Path(sys.argv[1]), 0, 2, threads=int(sys.argv[2]))
    import torch
    before = cpu_ticks()
    big = torch.ones(1 << 24)
    for _ in range(60):
        big.add_(1)
    after = cpu_ticks()
    nice = {tid: os.getpriority(os.PRIO_PROCESS, tid) for tid in after}
    cores = {tid: sorted(os.sched_getaffinity(tid)) for tid in after}
    busy = [tid for tid in after if after[tid] - before.get(tid, 0) >= 5]
    print(json.dumps({"loader": threading.get_native_id(), "main": threading.main_thread().native_id,
                      "nice": nice, "busy": busy, "cores": cores}))

thread = threading.Thread(target=probe)
thread.start()
thread.join()
"""


def _probe(model_path: Path, threads: int) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(model_path), str(threads)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("nice", "cores"):
        report[key] = {int(tid): value for tid, value in report[key].items()}  # type: ignore[attr-defined]
    return report


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads are told apart through /proc")
def test_the_workers_are_lowered_and_bound_to_other_cores_than_the_stage_thread(model_path: Path):
    report = _probe(model_path, threads=2)
    nice: dict[int, int] = report["nice"]  # type: ignore[assignment]
    loader, main = report["loader"], report["main"]
    assert nice[loader] == 0 and nice[main] == 0
    lowered = {tid for tid, value in nice.items() if value == WORKER_NICE_STEP}
    assert lowered, f"no thread was lowered: {nice}"
    # The lowered threads are torch's workers: they did part of the parallel op.
    workers = lowered & set(report["busy"])  # type: ignore[arg-type]
    assert workers, f"lowered {lowered}, busy {report['busy']}"
    if len(os.sched_getaffinity(0)) < 2:
        return  # one core: nothing to bind apart
    # ...each bound to a core of its own, not the stage thread's.
    cores: dict[int, list[int]] = report["cores"]  # type: ignore[assignment]
    assert len(cores[loader]) == 1
    assert all(len(cores[w]) == 1 and cores[w] != cores[loader] for w in workers), cores


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads are told apart through /proc")
def test_one_thread_per_stage_has_no_workers_to_lower(model_path: Path):
    report = _probe(model_path, threads=1)
    assert set(report["nice"].values()) == {0}  # type: ignore[union-attr]
