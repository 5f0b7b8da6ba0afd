"""mDNS discovery between two hosts on a virtual LAN (two network namespaces and a veth pair)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import uuid

import pytest
from tests.helpers import is_root

from dinet.node.local_mesh import start_node

pytestmark = pytest.mark.skipif(not is_root(), reason="network namespaces need root (CI runs as root)")

# Addresses from the benchmarking range (RFC 2544): they exist only inside the namespaces.
# A subnet per run, so leftovers of an interrupted run cannot shadow this one's routes.
SUBNET = f"198.18.{random.randint(1, 99)}"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def lan():
    """Two namespaces joined by a veth pair, with multicast routed onto it."""
    tag = uuid.uuid4().hex[:6]
    spaces = [f"dinet-a-{tag}", f"dinet-b-{tag}"]
    links = [f"dva{tag}", f"dvb{tag}"]
    for space in spaces:
        ip("netns", "add", space)
    try:
        ip("link", "add", links[0], "type", "veth", "peer", "name", links[1])
        for i, (space, link) in enumerate(zip(spaces, links, strict=True)):
            ip("link", "set", link, "netns", space)
            ip("-n", space, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", link)
            ip("-n", space, "link", "set", link, "up")
            ip("-n", space, "link", "set", "lo", "up")
            ip("-n", space, "route", "add", "224.0.0.0/4", "dev", link)
        yield spaces
    finally:
        for space in spaces:
            subprocess.run(["ip", "netns", "del", space], capture_output=True)


def test_nodes_on_a_lan_find_each_other_by_mdns_alone(tmp_path, lan):
    nodes = [
        start_node(
            tmp_path / f"node-{i}",
            mdns=True,
            listen=f"/ip4/{SUBNET}.{i + 1}/tcp/0",
            command_prefix=["ip", "netns", "exec", space],
        )
        for i, space in enumerate(lan)
    ]
    try:
        # A client beside node A, told only about node A and with mDNS off itself:
        # it can list node B only if node A discovered B over mDNS.
        for _ in range(10):
            listing = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    lan[0],
                    sys.executable,
                    "-m",
                    "dinet",
                    "peers",
                    "--json",
                    "--no-mdns",
                    "--wait",
                    "2",
                    "--home",
                    str(tmp_path / "client"),
                    "--bootstrap",
                    nodes[0].addr,
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert listing.returncode == 0, listing.stderr
            seen = {peer["peer_id"] for peer in json.loads(listing.stdout)}
            if seen == {n.peer_id for n in nodes}:
                break
        assert seen == {n.peer_id for n in nodes}
    finally:
        for node in nodes:
            node.stop()
