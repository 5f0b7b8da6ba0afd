"""A private swarm across NAT (the NAT lab): members are served through relays and hole
punches; a host without the swarm key, or not on a node's allowlist, is refused and learns
nothing.

The world: `--no-model` relays on pub1 and pub2 (two, so that AutoNAT has two peers to agree)
and node b1 in home B serving the default model, all holding swarm key K: every connection
here (TCP to the relays, circuits through them, the punched one between the homes, AutoNAT's
dial-backs) runs under the pnet layer. b1 also admits only the peers on its allowlist: the
relays (it dials them itself) and the member client, whose id `din peer-id` gives before it
first runs. Clients run in home A and know only pub1's address.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.lab import probe
from tests.lab.nat import NatLab

from dinet.node.local_mesh import NodeProcess, start_node
from dinet.node.service import NODE_FILE, NODE_FILE_EVERY_S
from dinet.p2p.pnet import write_new_swarm_key

REPO = Path(__file__).parents[2]
PORT = 4001
PROMPT = "What is the largest planet?"
MAX_TOKENS = 24  # tests/reach/lab_client.py asks for as many
REFUSED_WITHIN_S = 60  # a refused client must exit, not hang: far above what it takes


def until(condition: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    """Poll `condition` until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.2)
    return value


def node_file(node: NodeProcess) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((node.home / NODE_FILE).read_text())
    return data


def relays_of(node: NodeProcess) -> set[str]:
    """The relays a node advertises circuits through (its node.json)."""
    addrs = node_file(node)["advertised"]
    return {a.split("/p2p-circuit")[0].rsplit("/p2p/", 1)[1] for a in addrs if "/p2p-circuit" in a}


@dataclass
class Swarm:
    lab: NatLab
    root: Path
    key: Path
    pub1: NodeProcess
    pub2: NodeProcess
    b1: NodeProcess
    member: Path  # the home of the client on b1's allowlist

    def din(self, host: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "dinet", *args]
        return self.lab.run(host, argv, capture_output=True, text=True, timeout=timeout, cwd=REPO)

    def ask(self, home: Path, *flags: str) -> subprocess.CompletedProcess[str]:
        """`din ask --json` in home A for b1's model, with only `--bootstrap` to pub1."""
        return self.din(
            "a1",
            "ask",
            "--json",
            "--no-mdns",
            "--home",
            str(home),
            "--bootstrap",
            self.pub1.addr,
            "--model-hash",
            str(self.b1.model_hash),
            "--max-tokens",
            str(MAX_TOKENS),
            *flags,
            PROMPT,
            timeout=180,
        )

    def peers(self, home: Path, *flags: str) -> subprocess.CompletedProcess[str]:
        """`din peers --json` in home A, with only `--bootstrap` to pub1."""
        argv = ["peers", "--json", "--no-mdns", "--home", str(home), "--bootstrap", self.pub1.addr]
        return self.din("a1", *argv, "--wait", "5", *flags, timeout=REFUSED_WITHIN_S)

    def circuits_relayed(self) -> int:
        return sum(node_file(n)["reach"]["circuits_relayed"] for n in (self.pub1, self.pub2))

    def circuits_relayed_settled(self) -> int:
        """The count once a whole rewrite period of node.json has passed without change, so
        that a circuit an earlier test opened is not counted against this one."""
        count = self.circuits_relayed()
        while True:
            time.sleep(NODE_FILE_EVERY_S + 1)
            if (later := self.circuits_relayed()) == count:
                return count
            count = later


def client_id(home: Path) -> str:
    """The peer id `din ask` and the lab client use in `home` (made now if missing)."""
    argv = [sys.executable, "-m", "dinet", "peer-id", "--json", "--home", str(home)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60, cwd=REPO)
    ids: dict[str, str] = json.loads(done.stdout)
    return ids["client"]


@pytest.fixture(scope="module")
def swarm(tmp_path_factory) -> Iterator[Swarm]:
    root = tmp_path_factory.mktemp("private-nat")
    key = root / "swarm.key"
    write_new_swarm_key(key)
    member = root / "member"
    nodes: list[NodeProcess] = []
    with NatLab() as lab:
        try:
            for host in ("pub1", "pub2"):
                nodes.append(
                    start_node(
                        root / host,
                        bootstrap=[n.addr for n in nodes],
                        listen=f"/ip4/{lab.addr(host)}/tcp/{PORT}",
                        command_prefix=lab.prefix(host),
                        no_model=True,
                        extra_args=["--swarm-key", str(key)],
                    )
                )
            pub1, pub2 = nodes
            allowlist = root / "allow.txt"
            allowlist.write_text(f"{pub1.peer_id}\n{pub2.peer_id}\n{client_id(member)}  # the member\n")
            b1 = start_node(
                root / "b1",
                bootstrap=[pub1.addr],
                listen=f"/ip4/0.0.0.0/tcp/{PORT}",
                command_prefix=lab.prefix("b1"),
                extra_args=["--swarm-key", str(key), "--allow-peers", str(allowlist)],
            )
            nodes.append(b1)
            both = {pub1.peer_id, pub2.peer_id}
            until(lambda: relays_of(b1) == both, what="b1's reservations on both relays")
            yield Swarm(lab, root, key, pub1, pub2, b1, member)
        finally:
            for node in nodes:
                node.stop()


class LabClient(probe.LineDriven):
    """tests/reach/lab_client.py running in a lab host."""

    def __init__(self, swarm: Swarm, host: str, home: Path) -> None:
        argv = [sys.executable, "-m", "tests.reach.lab_client", str(home), swarm.pub1.addr]
        argv += [str(swarm.b1.model_hash), f"--swarm-key={swarm.key}"]
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
        super().__init__(swarm.lab.popen(host, argv, **pipes, text=True, cwd=REPO))


def test_a_member_in_another_home_is_answered_through_the_relay_then_the_punched_path(swarm):
    lab, b1 = swarm.lab, swarm.b1
    relayed_before = swarm.circuits_relayed()
    member = LabClient(swarm, "a1", swarm.member)
    try:
        assert "ready" in member.reply(60)
        first = member.command(f"ask {PROMPT}")
        assert first["peer_id"] == b1.peer_id and first["text"].strip()
        # It reached b1 through a relay circuit (node.json is rewritten within 5 s)...
        until(lambda: swarm.circuits_relayed() > relayed_before, 10, "a circuit relayed for the member")

        assert member.command(f"direct {b1.peer_id} 30") == {"link": "direct"}  # ...then punched
        lab.reset_wan_counters()
        second = member.command(f"ask {PROMPT}")

        assert second == {**first, "link": "direct"}
        assert lab.wan_bytes(between=("a1", "b1")) > 1000, lab.wan_counters()  # across the homes
        assert member.command("counters")["punch_successes"] >= 1
    finally:
        member.close()


@pytest.mark.parametrize("holding", ["no key", "another key"])
def test_a_client_without_the_swarm_key_is_refused_and_learns_nothing(swarm, tmp_path, holding):
    flags = []
    if holding == "another key":
        write_new_swarm_key(tmp_path / "other.key")
        flags = ["--swarm-key", str(tmp_path / "other.key")]
    told = "private swarm" if holding == "no key" else "not in this private swarm"
    relayed_before = swarm.circuits_relayed_settled()

    asked = swarm.ask(tmp_path / "stranger", *flags)
    listed = swarm.peers(tmp_path / "stranger", *flags)

    for done in (asked, listed):
        assert done.returncode == 1 and not done.stdout, done  # no answer, no manifest
        assert "no bootstrap peer answered" in done.stderr and told in done.stderr, done.stderr
    if holding == "no key":
        assert "--swarm-key" in asked.stderr, asked.stderr  # what to do about it
    assert swarm.circuits_relayed() == relayed_before  # no circuit went anywhere for it
    # The swarm goes on serving its member.
    answered = swarm.ask(swarm.member, "--swarm-key", str(swarm.key))
    assert answered.returncode == 0, answered.stderr[-3000:]
    assert json.loads(answered.stdout)["peer_id"] == swarm.b1.peer_id


def test_a_member_not_on_b1_s_allowlist_gets_no_answer_from_b1_and_a_listed_one_does(swarm, tmp_path):
    stranger = tmp_path / "unlisted"
    stranger_id = client_id(stranger)

    refused = swarm.ask(stranger, "--swarm-key", str(swarm.key))
    seen = swarm.peers(stranger, "--swarm-key", str(swarm.key))

    assert refused.returncode == 1 and not refused.stdout, refused
    assert "allowlist" in refused.stderr, refused.stderr[-3000:]
    assert f"refused a connection: {stranger_id} is not on the allowlist" in swarm.b1.log_path.read_text()
    # It is in the swarm: the relays speak to it, but b1 never did.
    assert seen.returncode == 0, seen.stderr[-3000:]
    connected = {p["peer_id"]: p["link"] for p in json.loads(seen.stdout)}
    assert connected.get(swarm.pub1.peer_id) == "direct", connected
    assert connected.get(swarm.b1.peer_id) is None, connected
    answered = swarm.ask(swarm.member, "--swarm-key", str(swarm.key))
    assert answered.returncode == 0, answered.stderr[-3000:]
    assert json.loads(answered.stdout)["peer_id"] == swarm.b1.peer_id
