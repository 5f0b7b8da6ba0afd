"""Node processes on this machine: for `din demo`, tests and benchmarks.

Each node is a real `din node` process; its first line of output (with --json)
says it is serving, with its peer id and addresses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dinet.errors import DinetError
from dinet.wire.ids import ModelHash, PeerId

START_TIMEOUT_S = 120.0  # a loaded 2-core machine (the suite runs two workers) takes a minute at times


@dataclass
class NodeProcess:
    process: subprocess.Popen[bytes]
    peer_id: PeerId
    addrs: list[str]
    model_id: str | None  # None for a node started with no_model
    model_hash: ModelHash | None
    home: Path
    log_path: Path
    printed: dict[str, Any] = field(default_factory=dict)  # what `din node --json` printed at start

    @property
    def addr(self) -> str:
        """The first address it listens on (loopback for nodes of a LocalMesh)."""
        return self.addrs[0]

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()  # its pipe; only the first line was read


def start_node(
    home: Path,
    *,
    bootstrap: list[str] = (),  # type: ignore[assignment]
    threads: int | None = 1,  # None: the node's own setting (DINET_THREADS, its config file, default)
    extra_args: list[str] = (),  # type: ignore[assignment]
    env: dict[str, str] | None = None,
    listen: str = "/ip4/127.0.0.1/tcp/0",
    mdns: bool = False,
    command_prefix: list[str] = (),  # type: ignore[assignment]
    start_timeout: float = START_TIMEOUT_S,
    no_model: bool = False,
) -> NodeProcess:
    """Start `din node` (on loopback unless told otherwise) and wait until it is serving.

    `command_prefix` runs it inside something, e.g. `ip netns exec NS`; `no_model` starts
    a node that serves no model (`--no-model`: it joins and routes only).
    """
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "node.log"
    args = [
        *command_prefix,
        sys.executable,
        "-m",
        "dinet",
        "node",
        "--json",
        "-v",
        "--mdns" if mdns else "--no-mdns",
        "--home",
        str(home),
        "--listen",
        listen,
    ]
    if threads is not None:
        args += ["--threads", str(threads)]
    if no_model:
        args.append("--no-model")
    for addr in bootstrap:
        args += ["--bootstrap", addr]
    args += list(extra_args)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    line = _first_line(process, start_timeout)
    if not line:
        process.kill()
        process.wait()
        tail = log_path.read_text(errors="replace")[-2000:]
        raise DinetError(f"node in {home} did not start; its log ends:\n{tail}")
    info = json.loads(line)
    return NodeProcess(
        process, info["peer_id"], info["addrs"], info["model_id"], info["model_hash"], home, log_path, info
    )


def _first_line(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert process.stdout is not None
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    return box[0] if box else b""


@dataclass
class LocalMesh:
    """Several nodes on loopback, the later ones bootstrapped from the first."""

    root: Path
    size: int = 3
    threads: int = 1
    extra_args: list[str] = field(default_factory=list)
    nodes: list[NodeProcess] = field(default_factory=list)
    # The first `embedding_nodes` nodes also serve this embedding GGUF (--embedding-model).
    embedding_model: Path | None = None
    embedding_nodes: int = 0

    def _args(self, index: int) -> list[str]:
        if self.embedding_model is not None and index < self.embedding_nodes:
            return [*self.extra_args, "--embedding-model", str(self.embedding_model)]
        return self.extra_args

    def __enter__(self) -> LocalMesh:
        try:
            first = start_node(self.root / "node-0", threads=self.threads, extra_args=self._args(0))
            self.nodes.append(first)
            threads = [
                threading.Thread(target=self._start_one, args=(i, first.addr)) for i in range(1, self.size)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if len(self.nodes) != self.size:
                raise DinetError(f"only {len(self.nodes)} of {self.size} nodes started")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_one(self, index: int, bootstrap: str) -> None:
        try:
            node = start_node(
                self.root / f"node-{index}",
                bootstrap=[bootstrap],
                threads=self.threads,
                extra_args=self._args(index),
            )
            self.nodes.append(node)
        except DinetError as exc:
            sys.stderr.write(f"{exc}\n")

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    @property
    def bootstrap(self) -> list[str]:
        return [n.addr for n in self.nodes]


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is `pid` (a node's engine worker), read from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue  # the process ended while we looked
            if ppid == pid:
                found.append(int(entry))
    return found
