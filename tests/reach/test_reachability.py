"""Nodes find out whether they can be reached, in the NAT lab (tests/lab/README.md).

Real `din node` processes on the public hosts and in the homes, each listening on every
interface (0.0.0.0), as a node does by default: only dial-backs from peers tell them apart.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from tests.lab.nat import NatLab

from dinet.node.local_mesh import NodeProcess, start_node

PORT = 4001
DEADLINE_S = 90.0


def node_file(node: NodeProcess) -> dict[str, Any]:
    text = (node.home / "node.json").read_text()
    found: dict[str, Any] = json.loads(text)
    return found


def wait_for(what: Callable[[], Any], describe: str) -> Any:
    """`what()` once it is truthy; fails with `describe` after DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if found := what():
            return found
        time.sleep(0.5)
    raise AssertionError(f"not within {DEADLINE_S:g} s: {describe}")


def reachability_once(node: NodeProcess, state: str) -> dict[str, Any] | None:
    reach: dict[str, Any] = node_file(node)["reachability"]
    return reach if reach["state"] == state else None


def manifests_seen(lab: NatLab, host: str, bootstrap: str, home: Path) -> dict[str, dict[str, Any]]:
    """Every manifest `din peers` finds from `host`, by peer id."""
    argv = [sys.executable, "-m", "dinet", "peers", "--json", "--no-mdns", "--wait", "3", "--home", str(home)]
    done = lab.run(host, [*argv, "--bootstrap", bootstrap], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return {m["peer_id"]: m for m in json.loads(done.stdout)}


@pytest.fixture
def nodes(nat_lab: NatLab, tmp_path: Path) -> Iterator[dict[str, NodeProcess]]:
    """Nodes on pub1, pub2, a1 (home A) and b1 (home B, announcing a port forward its
    router does not have), all bootstrapped from pub1."""
    with ExitStack() as stack:
        started: dict[str, NodeProcess] = {}

        def start(host: str, *extra: str) -> None:
            bootstrap = [public_addr(nat_lab, started["pub1"])] if started else []
            node = start_node(
                tmp_path / host,
                bootstrap=bootstrap,
                listen=f"/ip4/0.0.0.0/tcp/{PORT}",
                extra_args=list(extra),
                command_prefix=nat_lab.prefix(host),
            )
            stack.callback(node.stop)
            started[host] = node

        start("pub1")
        start("pub2")
        start("a1")
        start("b1", "--announce", f"/ip4/{nat_lab.outside_addr('b1')}/tcp/{PORT}")
        yield started


def public_addr(lab: NatLab, node: NodeProcess) -> str:
    host = node.home.name
    return f"/ip4/{lab.addr(host)}/tcp/{PORT}/p2p/{node.peer_id}"


def test_public_hosts_find_themselves_public_and_homes_private(nat_lab, nodes, tmp_path):
    for host in ("pub1", "pub2"):
        reach = wait_for(lambda h=host: reachability_once(nodes[h], "public"), f"{host} public")
        at = f"/ip4/{nat_lab.addr(host)}/tcp/{PORT}"
        assert reach["addrs"] == [at]  # its WAN address: not 0.0.0.0, not loopback
        assert reach["reason"].endswith(f"peers dialed back {at}")

    outside_a = f"/ip4/{nat_lab.outside_addr('a1')}/tcp/{PORT}"
    reach = wait_for(lambda: reachability_once(nodes["a1"], "private"), "a1 private")
    assert reach["reason"].endswith(f"peers could not dial back {outside_a}")  # its router's address
    assert reach["addrs"] == []

    announced = f"/ip4/{nat_lab.outside_addr('b1')}/tcp/{PORT}"
    reach = wait_for(lambda: reachability_once(nodes["b1"], "private"), "b1 private")
    assert reach["reason"].endswith(f"peers could not dial back {announced} (announced)")
    assert reach["addrs"] == [announced]  # the operator said so

    def advertised() -> dict[str, list[str]] | None:
        seen = manifests_seen(nat_lab, "pub2", public_addr(nat_lab, nodes["pub1"]), tmp_path / "client")
        addrs = {host: seen.get(node.peer_id, {}).get("addrs", []) for host, node in nodes.items()}
        return addrs if addrs["pub1"] == [public_addr(nat_lab, nodes["pub1"])] and addrs["b1"] else None

    addrs = wait_for(advertised, "pub1's manifest advertising only its WAN address")
    assert f"{announced}/p2p/{nodes['b1'].peer_id}" in addrs["b1"]
