"""The NAT lab itself: its home routers behave like real ones, its WAN delays and counts.

Every other reach test trusts these properties (tests/lab/README.md), so each is shown
here with real TCP connections between namespaces, not read off the configuration.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from tests.lab import probe
from tests.lab.nat import LabError, NatLab

PORT = 4100  # the public server's port
REFUSED_S = 2.0  # a connection that has not opened in this long was dropped on the way


def connect(
    lab: NatLab, host: str, ip: str, port: int, request: str = "whoami", **opts: object
) -> dict[str, Any]:
    """Run a one-shot probe client on `host`; its JSON result."""
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in opts.items()]
    done = lab.run(
        host, probe.argv("connect", ip, port, request, *flags), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@contextmanager
def server(lab: NatLab, host: str, port: int = PORT) -> Iterator[subprocess.Popen[str]]:
    """A probe server on `host`; its further output lines are the connections it accepted."""
    process = lab.popen(
        host, probe.argv("serve", port), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert probe.read_json_line(process, 20) == {"port": port}
        yield process
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(10)


def accepted(process: subprocess.Popen[str]) -> list[str]:
    """Whom a (stopped) server accepted connections from."""
    assert process.stdout is not None
    return [json.loads(line)["accepted"] for line in process.stdout]


def test_a_home_host_reaches_public_hosts_from_one_outside_address_and_port(nat_lab):
    """Masquerade shows the router's WAN address with the inside port kept, and the same
    mapping to every destination (endpoint-independent): what hole punching relies on."""
    with server(nat_lab, "pub1"), server(nat_lab, "pub2"):
        seen = [connect(nat_lab, "a1", nat_lab.addr(h), PORT, bind_port=5001) for h in ("pub1", "pub2")]
    assert all(r["ok"] and r["local"] == "192.168.1.2:5001" for r in seen), seen
    assert [r["reply"] for r in seen] == ["198.18.3.2:5001", "198.18.3.2:5001"]


def test_nothing_from_outside_opens_a_connection_into_a_home(nat_lab):
    """a1 listens on port P and keeps a connection open from P to pub1, so home A's router
    holds a mapping for P: still neither pub1 nor b1 gets in, by any address."""
    with server(nat_lab, "pub1"), server(nat_lab, "a1", 5002) as inside:
        holder = nat_lab.popen(
            "a1",
            probe.argv("connect", nat_lab.addr("pub1"), PORT, "whoami", "--bind-port=5002", "--hold"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert probe.read_json_line(holder, 20)["reply"] == "198.18.3.2:5002"
        from_pub1 = [
            connect(nat_lab, "pub1", ip, 5002, timeout=REFUSED_S) for ip in ("192.168.1.2", "198.18.3.2")
        ]
        from_b1 = [
            connect(nat_lab, "b1", ip, 5002, timeout=REFUSED_S) for ip in ("192.168.1.2", "198.18.3.2")
        ]
        beside = connect(nat_lab, "a2", "192.168.1.2", 5002)  # the listener does answer its own LAN
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
    assert not any(r["ok"] for r in from_pub1 + from_b1), from_pub1 + from_b1
    assert beside["ok"], beside
    assert accepted(inside) == [f"192.168.1.3:{beside['local'].split(':')[1]}"]


def test_two_homes_cannot_reach_each_other_directly(nat_lab):
    with server(nat_lab, "b1"):
        by_lan_addr = connect(nat_lab, "a1", nat_lab.addr("b1"), PORT, timeout=REFUSED_S)
        by_router_addr = connect(nat_lab, "a1", nat_lab.outside_addr("b1"), PORT, timeout=REFUSED_S)
        beside = connect(nat_lab, "b2", nat_lab.addr("b1"), PORT)
    assert not by_lan_addr["ok"] and not by_router_addr["ok"], (by_lan_addr, by_router_addr)
    assert beside["ok"], beside


def test_two_homes_connect_by_tcp_simultaneous_open(nat_lab):
    """Hole punching as DCUtR does it over TCP: each end learns its outside address from a
    public host, then both dial each other from their own port at the same moment."""
    ports = {"a1": 5003, "b1": 5004}
    with server(nat_lab, "pub1"):
        outside = {
            h: connect(nat_lab, h, nat_lab.addr("pub1"), PORT, bind_port=p)["reply"] for h, p in ports.items()
        }
    assert outside == {"a1": "198.18.3.2:5003", "b1": "198.18.4.2:5004"}
    nat_lab.reset_wan_counters()
    punchers = {
        h: nat_lab.popen(
            h,
            probe.argv(
                "punch", *outside[other].split(":"), f"--bind-port={ports[h]}", f"--name={h}", "--timeout=20"
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for h, other in (("a1", "b1"), ("b1", "a1"))
    }
    for process in punchers.values():
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    results = {h: probe.read_json_line(process, 30) for h, process in punchers.items()}
    assert results["a1"]["ok"] and results["b1"]["ok"], results
    assert (results["a1"]["heard"], results["b1"]["heard"]) == ("b1", "a1")
    assert results["a1"]["remote"] == "198.18.4.2:5004"
    assert results["b1"]["remote"] == "198.18.3.2:5003"
    assert nat_lab.wan_bytes(between=("a1", "b1")) > 0  # home to home, through no one else
    assert nat_lab.wan_bytes("pub1") == 0


def test_wan_delay_holds_every_packet_and_a_transfer_arrives_whole(nat_lab):
    size = 4_000_000
    with server(nat_lab, "pub1"):
        nat_lab.set_wan(20)
        nat_lab.reset_wan_counters()
        result = connect(nat_lab, "a1", nat_lab.addr("pub1"), PORT, f"send {size}")
        slow_stats = nat_lab.wan_link_stats()
    assert result["ok"], result
    # The SYN and the SYN-ACK each cross the WAN once: one round trip of 2 x 20 ms.
    assert result["connect_ms"] >= 40.0, result
    assert (result["bytes"], result["sha256"]) == (size, hashlib.sha256(probe.payload(size)).hexdigest())
    assert slow_stats["packets_out"] > 0
    assert nat_lab.wan_bytes(between=("a1", "pub1")) >= size
    assert nat_lab.wan_bytes(between=("ha", "pub1")) == nat_lab.wan_bytes("ha")  # nothing else from home A
    assert nat_lab.wan_bytes(between=("ha", "hb")) == 0


def test_wan_loss_drops_packets_and_tcp_still_delivers(nat_lab):
    with server(nat_lab, "pub1"):
        nat_lab.set_wan(0, loss=1.0)
        lost = connect(nat_lab, "a1", nat_lab.addr("pub1"), PORT, timeout=REFUSED_S)
        nat_lab.set_wan(1, loss=0.05)
        lossy = connect(nat_lab, "a1", nat_lab.addr("pub1"), PORT, "send 1000000", timeout=30)
        stats = nat_lab.wan_link_stats()
        nat_lab.set_wan(0)
        clean = connect(nat_lab, "a1", nat_lab.addr("pub1"), PORT)
    assert not lost["ok"], lost
    assert lossy["ok"] and lossy["sha256"] == hashlib.sha256(probe.payload(1_000_000)).hexdigest(), lossy
    assert stats["dropped"] > 0, stats
    assert clean["ok"], clean


def test_a_cut_host_is_unreachable_until_restored(nat_lab):
    with server(nat_lab, "pub1"):
        reached = {}
        target = nat_lab.addr("pub1")
        for host in ("pub1", "a1", "ha"):  # a public host, a LAN host, a whole home
            nat_lab.cut(host)
            reached[f"{host} cut"] = connect(nat_lab, "a1", target, PORT, timeout=REFUSED_S)["ok"]
            nat_lab.restore(host)
            reached[f"{host} restored"] = connect(nat_lab, "a1", target, PORT, timeout=10)["ok"]
    assert reached == {
        "pub1 cut": False,
        "pub1 restored": True,
        "a1 cut": False,
        "a1 restored": True,
        "ha cut": False,
        "ha restored": True,
    }


def test_two_labs_run_side_by_side_and_leave_nothing_behind():
    with NatLab(delay_ms=10) as slow, NatLab() as plain:
        results = {}
        for name, lab in (("slow", slow), ("plain", plain)):
            with server(lab, "pub1"):
                results[name] = connect(lab, "a1", lab.addr("pub1"), PORT)
        sleeper = slow.popen("b2", ["sleep", "300"])
        names = [lab.ns(h) for lab in (slow, plain) for h in lab.hosts]
    assert results["slow"]["ok"] and results["plain"]["ok"], results
    assert results["slow"]["connect_ms"] >= 20.0  # the delay given at creation: 2 x 10 ms
    assert len(set(names)) == len(names)
    assert sleeper.poll() is not None  # killed with its lab
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not [name for name in names if name in left]


def test_a_bad_host_name_is_a_clear_error(nat_lab):
    with pytest.raises(LabError, match="no host 'c1' in the lab"):
        nat_lab.prefix("c1")


def test_without_root_the_lab_fails_with_the_reason(monkeypatch):
    """Where the lab cannot run, its tests fail saying why; they never skip."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match="needs root"), NatLab():
        pass
