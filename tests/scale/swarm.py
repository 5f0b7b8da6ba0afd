"""Many real `din node` processes on loopback, and what each of them costs: for
`tests/scale/test_many_nodes.py` and `bench/scale.py`.

The shape of a large deployment on one machine: one `--no-model` node is everyone's only
bootstrap address, mDNS is off, most nodes serve the FAKE engine (`--fake-engine`, model
`fake-echo`: a hundred llama.cpp workers would not fit in memory) and a few the real model.

What a node costs is read from the kernel, never from the node: CPU time from
/proc/PID/stat, its TCP connections and their byte counters from `ss -tinpH`.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dinet.errors import DinetError
from dinet.node.local_mesh import NodeProcess, child_pids, start_node

Kind = Literal["bootstrap", "fake", "real"]
START_TIMEOUT_S = 180.0  # a loaded 2-core machine starting dozens of Python processes at once
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Member:
    kind: Kind
    node: NodeProcess

    def log_tail(self, chars: int = 600) -> str:
        return self.node.log_path.read_text(errors="replace")[-chars:]

    @property
    def pid(self) -> int:
        return self.node.process.pid

    @property
    def alive(self) -> bool:
        return self.node.process.poll() is None


@dataclass
class Swarm:
    """A bootstrap node and the nodes joined through it; `replace` kills and starts some."""

    root: Path
    parallel: int = 4  # nodes starting at once (each start is a few CPU-seconds of imports)
    extra_args: list[str] = field(default_factory=list)  # flags of every node
    members: list[Member] = field(default_factory=list)
    _started: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def bootstrap(self) -> Member:
        return self.members[0]

    @property
    def last(self) -> Member:
        """The node started last: the one a client joins through, so it must find the rest."""
        return self.members[-1]

    def live(self) -> list[Member]:
        return [m for m in self.members if m.alive]

    def crashed(self) -> list[Member]:
        """Members that ended by themselves (those `replace` killed are no longer members)."""
        return [m for m in self.members if not m.alive]

    def start(self, fake: int, real: int) -> None:
        """The bootstrap node (if not started yet), then `real` model nodes and `fake` fake
        ones, `parallel` at a time. DinetError if any fails to start."""
        if not self.members:
            self.members.append(Member("bootstrap", self._start_one("bootstrap")))
        kinds: list[Kind] = ["real"] * real + ["fake"] * fake
        self._start_many(kinds)

    def replace(self, count: int, rng: random.Random, keep: Iterable[Member] = ()) -> list[Member]:
        """SIGKILL `count` live nodes (never the bootstrap node nor those in `keep`) and start
        as many new ones of the same kinds, each with a new home and identity. The killed."""
        spared = {id(self.bootstrap), *(id(m) for m in keep)}
        victims = rng.sample([m for m in self.live() if id(m) not in spared], count)
        for victim in victims:
            kill(victim)
        self.members = [m for m in self.members if m not in victims]
        self._start_many([v.kind for v in victims])
        return victims

    def _start_many(self, kinds: list[Kind]) -> None:
        """Start nodes of `kinds`; every one that started is a member (and stopped by `stop`)
        even when another failed, which raises DinetError once all have tried."""
        with ThreadPoolExecutor(self.parallel) as pool:
            futures = [(kind, pool.submit(self._start_one, kind)) for kind in kinds]
        failed = []
        for kind, future in futures:
            try:
                self.members.append(Member(kind, future.result()))
            except DinetError as exc:
                failed.append(str(exc))
        if failed:
            raise DinetError(f"{len(failed)} of {len(kinds)} nodes did not start; the first: {failed[0]}")

    def _start_one(self, kind: Kind) -> NodeProcess:
        with self._lock:
            index = self._started
            self._started += 1
        home = self.root / f"{kind}-{index}"
        if kind == "bootstrap":
            return start_node(home, no_model=True, extra_args=self.extra_args, start_timeout=START_TIMEOUT_S)
        bootstrap = [self.bootstrap.node.addr]
        extra = [*self.extra_args, *(["--fake-engine"] if kind == "fake" else [])]
        return start_node(home, bootstrap=bootstrap, extra_args=extra, start_timeout=START_TIMEOUT_S)

    def stop(self) -> None:
        for member in self.members:
            kill(member)

    def __enter__(self) -> Swarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def kill(member: Member) -> None:
    """SIGKILL a node (its engine worker, if any, ends when the node's pipes close) and reap it."""
    workers = child_pids(member.pid)
    if member.alive:
        member.node.process.send_signal(signal.SIGKILL)
    member.node.process.wait()
    if member.node.process.stdout is not None:
        member.node.process.stdout.close()
    for pid in workers:  # in its own session: SIGKILL of the node does not reach it
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- what a node costs, from the kernel ------------------------------------------------


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of these processes so far (0 for one that has ended)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    return total


def rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"^VmRSS:\s+(\d+)", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else 0.0


def tree(member: Member) -> list[int]:
    """A node's process and its engine worker."""
    return [member.pid, *child_pids(member.pid)]


@dataclass(frozen=True)
class Socket:
    pid: int
    local: str
    peer: str
    bytes_sent: int
    bytes_received: int


_USERS = re.compile(r"pid=(\d+)")
_SENT = re.compile(r"\bbytes_sent:(\d+)")
_RECEIVED = re.compile(r"\bbytes_received:(\d+)")


def established(pids: Iterable[int]) -> list[Socket]:
    """The established TCP sockets these processes own, with their byte counters."""
    wanted = set(pids)
    out = subprocess.run(
        ["ss", "-tinpH", "state", "established"], capture_output=True, text=True, check=True
    ).stdout
    sockets: list[Socket] = []
    head: list[str] | None = None
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):  # a socket's first line: queues, addresses, users
            head = line.split()
            continue
        if head is None or len(head) < 4:
            continue
        owner = _USERS.search(" ".join(head[4:]))
        if owner is not None and int(owner.group(1)) in wanted:
            sent, received = _SENT.search(line), _RECEIVED.search(line)
            sockets.append(
                Socket(
                    int(owner.group(1)),
                    head[2],
                    head[3],
                    int(sent.group(1)) if sent else 0,
                    int(received.group(1)) if received else 0,
                )
            )
        head = None
    return sockets


def connections(pids: Iterable[int]) -> dict[int, int]:
    """How many established TCP connections each process has (0 for none)."""
    counts = dict.fromkeys(pids, 0)
    for sock in established(counts):
        counts[sock.pid] += 1
    return counts


class TrafficMeter:
    """Bytes each process sent and received over TCP since `start`, summed per socket from
    samples: a socket that closes loses only what it carried since the last sample."""

    def __init__(self, pids: Iterable[int]) -> None:
        self.pids = list(pids)
        self._last: dict[tuple[int, str, str], int] = {}
        self.bytes = dict.fromkeys(self.pids, 0)
        self.connection_samples: dict[int, list[int]] = {pid: [] for pid in self.pids}

    def start(self) -> None:
        self._last = {
            (s.pid, s.local, s.peer): s.bytes_sent + s.bytes_received for s in established(self.pids)
        }

    def sample(self) -> None:
        now: dict[tuple[int, str, str], int] = {}
        per_pid = dict.fromkeys(self.pids, 0)
        for s in established(self.pids):
            key = (s.pid, s.local, s.peer)
            now[key] = total = s.bytes_sent + s.bytes_received
            self.bytes[s.pid] += total - self._last.get(key, 0)  # a new socket counts from zero
            per_pid[s.pid] += 1
        for pid, count in per_pid.items():
            self.connection_samples[pid].append(count)
        self._last = now
