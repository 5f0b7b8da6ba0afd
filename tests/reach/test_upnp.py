"""`--upnp`: a home router that speaks UPnP IGD (Debian's miniupnpd, nftables flavour)
forwards a port on request, and the node behind it becomes public.

Not the NAT lab's WAN: miniupnpd 2.3.1 refuses to run with an external address in any
reserved range (198.18.0.0/15 included: "Port forwarding is impossible"), so this test
builds its own three namespaces, with the home router's WAN side in 11.11.11.0/24 (an
ordinary unicast range; the namespaces reach nothing outside themselves). The hosts are
dinet hosts without a model (tests/reach/_dialback_peer.py), in separate processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE = "11.11.11.1"  # the home router's WAN address
PUBLIC = "11.11.11.2"
PORT = 40001
DEADLINE_S = 60.0

ROUTER_RULES = """
table ip home {
  chain post { type nat hook postrouting priority 100; oifname "{wan}" masquerade; }
  chain inbound { type filter hook forward priority 10; policy drop;
    ct state established,related accept
    ct status dnat accept
    iifname "{lan}" accept
  }
}
table inet miniupnpd {
  chain forward { type filter hook forward priority 0; policy accept; jump forwardupnp; }
  chain forwardupnp { }
  chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }
  chain postrouting { type nat hook postrouting priority 110; policy accept; jump postrouting_miniupnpd; }
  chain prerouting_miniupnpd { }
  chain postrouting_miniupnpd { }
}
"""

MINIUPNPD_CONF = """
ext_ifname={wan}
listening_ip={lan}
enable_upnp=yes
enable_natpmp=no
secure_mode=yes
uuid={uuid}
upnp_table_name=miniupnpd
upnp_nat_table_name=miniupnpd
upnp_forward_chain=forwardupnp
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
allow 1024-65535 10.77.1.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
"""


class UpnpHome:
    """home (10.77.1.2) -- router (miniupnpd; masquerade) -- pub (11.11.11.2)."""

    def __init__(self, tmp: Path) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.tmp = tmp
        self.processes: list[subprocess.Popen[str]] = []

    def ns(self, host: str) -> str:
        return f"du-{self.tag}-{host}"

    def popen(self, host: str, argv: list[str], **kw: Any) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
        process = subprocess.Popen(["ip", "netns", "exec", self.ns(host), *argv], text=True, env=env, **kw)
        self.processes.append(process)
        return process

    def nft(self, host: str, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", self.ns(host), "nft", *args], input=stdin, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def __enter__(self) -> UpnpHome:
        missing = [tool for tool in ("ip", "nft", "miniupnpd") if shutil.which(tool) is None]
        if missing or os.geteuid() != 0:
            pytest.fail(
                f"needs root and {', '.join(missing) or 'nothing else'} (make system-deps installs them)"
            )
        try:
            self._build()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _build(self) -> None:
        lan, wan = f"du{self.tag}l", f"du{self.tag}w"  # the router's ends
        for host in ("home", "router", "pub"):
            _ip("netns", "add", self.ns(host))
            _ip("-n", self.ns(host), "link", "set", "lo", "up")
        _ip(
            "link",
            "add",
            lan,
            "netns",
            self.ns("router"),
            "type",
            "veth",
            "peer",
            "eth0",
            "netns",
            self.ns("home"),
        )
        _ip(
            "link",
            "add",
            wan,
            "netns",
            self.ns("router"),
            "type",
            "veth",
            "peer",
            "eth0",
            "netns",
            self.ns("pub"),
        )
        for host, dev, addr in (
            ("home", "eth0", "10.77.1.2/24"),
            ("router", lan, "10.77.1.1/24"),
            ("router", wan, f"{OUTSIDE}/24"),
            ("pub", "eth0", f"{PUBLIC}/24"),
        ):
            _ip("-n", self.ns(host), "addr", "add", addr, "dev", dev)
            _ip("-n", self.ns(host), "link", "set", dev, "up")
        _ip("-n", self.ns("home"), "route", "add", "default", "via", "10.77.1.1")
        subprocess.run(
            ["ip", "netns", "exec", self.ns("router"), "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True
        )
        self.nft("router", "-f", "-", stdin=ROUTER_RULES.replace("{wan}", wan).replace("{lan}", lan))
        conf = self.tmp / "miniupnpd.conf"
        conf.write_text(MINIUPNPD_CONF.format(wan=wan, lan=lan, uuid=uuid.uuid4()))
        self.popen("router", ["miniupnpd", "-d", "-f", str(conf)], stderr=subprocess.DEVNULL)

    def forwarded(self) -> str:
        return self.nft("router", "list", "chain", "inet", "miniupnpd", "prerouting_miniupnpd")

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            process.kill()
            process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()
        for host in ("home", "router", "pub"):
            subprocess.run(["ip", "netns", "del", self.ns(host)], capture_output=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def upnp_home(tmp_path: Path) -> Iterator[UpnpHome]:
    with UpnpHome(tmp_path) as home:
        yield home


def peer_program(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.reach._dialback_peer", *args]


def reachability_until(process: subprocess.Popen[str], state: str) -> dict[str, Any]:
    """Read the checking host's reports until one has `state`."""
    assert process.stdout is not None
    seen = []
    for line in process.stdout:  # the test's timeout bounds this; each report is a change
        seen.append(json.loads(line))
        if seen[-1]["state"] == state:
            return seen[-1]
    raise AssertionError(f"the host ended without being {state}: {seen}")


def test_a_node_behind_a_upnp_router_is_public_at_the_forwarded_port_and_private_without(upnp_home):
    servers = upnp_home.popen(
        "pub", peer_program("serve", PUBLIC), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert servers.stdout is not None
    server_addrs = json.loads(servers.stdout.readline())
    at = f"/ip4/{OUTSIDE}/tcp/{PORT}"

    plain = upnp_home.popen(
        "home", peer_program("check", str(PORT), *server_addrs), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert reachability_until(plain, "private")["reason"] == f"2 peers could not dial back {at}"
    assert plain.stdin is not None
    plain.stdin.close()
    plain.wait(DEADLINE_S)

    mapped = upnp_home.popen(
        "home",
        peer_program("check", str(PORT), "--upnp", *server_addrs),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    reach = reachability_until(mapped, "public")
    assert (reach["addrs"], reach["reason"]) == ([at], f"2 peers dialed back {at}")
    assert f"dport {PORT} dnat ip to 10.77.1.2:{PORT}" in upnp_home.forwarded()
    assert mapped.stdin is not None
    mapped.stdin.close()
    assert mapped.wait(DEADLINE_S) == 0
    assert f"dport {PORT}" not in upnp_home.forwarded()  # the mapping is removed on the way out
