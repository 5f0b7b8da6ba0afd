"""Mid-stream failover across a WAN with 40 ms of delay each way (tests/lab/README.md).

Model nodes on pub1 and pub2, the client in home A (behind NAT): the node serving an
answer fails after a few tokens, and the answer goes on from the other node, unbroken:
the tokens the lost node sent, then exactly what the other gives when resumed after them.
It fails in two ways: killed (its kernel closes the connection, so the client hears of it
one delay later) and cut off the WAN (nothing arrives any more; the client notices the
silence). The loopback version of
this test is tests/client/test_failover.py.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.lab.nat import NatLab

from dinet.node.local_mesh import NodeProcess, start_node

PORT = 4001
DELAY_MS = 40
PROMPT = "Tell me about the moon."
MAX_TOKENS = 64
FAIL_AFTER = 3  # tokens: early, so the victim surely has more to send when it is lost
EVENT_TIMEOUT_S = 60.0
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Failover:
    events: list[dict[str, Any]]
    victim: NodeProcess
    failed_at: float  # unix time

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        [found] = self.of(kind)
        return found

    @property
    def to_next_token_s(self) -> float:
        """From the failure to the first token of another node (for bench numbers, not asserted)."""
        after = [t for t in self.of("token") if t["peer_id"] != self.victim.peer_id]
        return float(after[0]["at"]) - self.failed_at


def start_model_nodes(lab: NatLab, root: Path) -> dict[str, NodeProcess]:
    """Model nodes on pub1 and pub2, pub2 bootstrapped from pub1."""
    first = start_node(
        root / "pub1",
        listen=f"/ip4/{lab.addr('pub1')}/tcp/{PORT}",
        command_prefix=lab.prefix("pub1"),
    )
    nodes = {"pub1": first}
    second = start_node(
        root / "pub2",
        bootstrap=[public_addr(lab, "pub1", first)],
        listen=f"/ip4/{lab.addr('pub2')}/tcp/{PORT}",
        command_prefix=lab.prefix("pub2"),
    )
    nodes["pub2"] = second
    return nodes


def public_addr(lab: NatLab, host: str, node: NodeProcess) -> str:
    return f"/ip4/{lab.addr(host)}/tcp/{PORT}/p2p/{node.peer_id}"


def kill(lab: NatLab, host: str, node: NodeProcess) -> None:
    os.kill(node.process.pid, signal.SIGKILL)


def cut(lab: NatLab, host: str, node: NodeProcess) -> None:
    lab.cut(host)


def fail_over_once(
    lab: NatLab,
    nodes: dict[str, NodeProcess],
    home: Path,
    fail: Callable[[NatLab, str, NodeProcess], None] = kill,
) -> Failover:
    """Ask from a1; `fail` the serving node (SIGKILL it unless told otherwise) once it has
    sent FAIL_AFTER + 1 tokens."""
    bootstrap = [arg for host, node in nodes.items() for arg in ("--bootstrap", public_addr(lab, host, node))]
    argv = [sys.executable, "-m", "tests.reach._failover_client", "--home", str(home), *bootstrap]
    argv += ["--prompt", PROMPT, "--max-tokens", str(MAX_TOKENS), "--peers", str(len(nodes))]
    client = lab.popen("a1", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    lines: queue.Queue[str] = queue.Queue()  # read by a thread: a kill must not wait for a buffer
    stderr: list[str] = []
    threading.Thread(target=lambda: [lines.put(line) for line in client.stdout], daemon=True).start()  # type: ignore[union-attr]
    threading.Thread(target=lambda: stderr.append(client.stderr.read()), daemon=True).start()  # type: ignore[union-attr]
    by_id = {n.peer_id: (host, n) for host, n in nodes.items()}
    events: list[dict[str, Any]] = []
    victim: NodeProcess | None = None
    failed_at = 0.0
    try:
        while not events or events[-1]["event"] not in ("reference", "error"):
            try:
                event = json.loads(lines.get(timeout=EVENT_TIMEOUT_S))
            except queue.Empty:
                client.kill()
                client.wait()
                raise AssertionError(
                    f"client silent for {EVENT_TIMEOUT_S:g} s (exit code {client.returncode}); "
                    f"its events: {events}; stderr: {stderr}"
                ) from None
            events.append(event)
            if event["event"] == "token" and event["index"] == FAIL_AFTER and victim is None:
                host, victim = by_id[event["peer_id"]]
                fail(lab, host, victim)
                failed_at = time.time()
    finally:
        client.kill()
        client.wait()
    assert events[-1]["event"] != "error", f"client failed: {events[-1]}; stderr: {stderr}"
    assert victim is not None, f"no token {FAIL_AFTER} came: {events}"
    return Failover(events, victim, failed_at)


@pytest.mark.parametrize("fail", [kill, cut], ids=["killed", "cut"])
def test_a_serving_node_lost_mid_answer_over_a_slow_wan_loses_and_repeats_nothing(tmp_path, nat_lab, fail):
    nat_lab.set_wan(DELAY_MS)
    nodes = start_model_nodes(nat_lab, tmp_path)
    try:
        run = fail_over_once(nat_lab, nodes, tmp_path / "client", fail)
    finally:
        for node in nodes.values():
            node.stop()
    stats = nat_lab.wan_link_stats()

    # The WAN really was slow: every round trip the client timed took two delays or more,
    # and the delaying emulator carried the traffic.
    rtt_ms = run.one("ready")["rtt_ms"]
    assert set(rtt_ms) == {n.peer_id for n in nodes.values()}
    assert min(rtt_ms.values()) >= 2 * DELAY_MS, rtt_ms
    assert stats["packets_out"] > 0 and stats["dropped"] == 0, stats

    # The failover happened mid-answer: the victim sent tokens, the other node finished.
    tokens = run.of("token")
    survivor = next(n for n in nodes.values() if n is not run.victim)
    from_victim = [t for t in tokens if t["peer_id"] == run.victim.peer_id]
    assert len(from_victim) > FAIL_AFTER
    assert tokens[len(from_victim) :] and {t["peer_id"] for t in tokens[len(from_victim) :]} == {
        survivor.peer_id
    }
    assert [t["index"] for t in tokens] == list(range(len(tokens)))  # none lost, none twice
    answer = run.one("answer")
    assert answer["peers_tried"] == [run.victim.peer_id, survivor.peer_id]
    assert answer["peer_id"] == survivor.peer_id

    # One unbroken text: the victim's tokens, then exactly the survivor's resumed answer.
    reference = run.one("reference")
    assert reference["peer_id"] == survivor.peer_id
    assert "".join(t["text"] for t in tokens) == answer["text"] == reference["text"]
    print(
        json.dumps(
            {"delay_ms": DELAY_MS, "fail": fail.__name__, "to_next_token_s": round(run.to_next_token_s, 3)}
        )
    )
