"""The NAT lab: a small internet of Linux network namespaces, two homes behind NAT.

    pub1 198.18.1.2     pub2 198.18.2.2
          |                   |
          +------- wan -------+        wan: the internet's router (forwards all traffic
          |   (delay, loss,   |        between attached hosts, counts its bytes, and can
          |    byte counters) |        hold each packet for a WAN delay)
    198.18.3.2           198.18.4.2
         ha                   hb       home routers: nftables masquerade, conntrack,
    192.168.1.1          192.168.2.1   unsolicited inbound from the WAN dropped
      [bridge]             [bridge]
      a1    a2             b1    b2
    .1.2  .1.3           .2.2  .2.3

Every namespace and link name carries a random tag per lab, so labs of parallel test
runs never meet, and nothing is added to the root namespace: every host, client programs
included, runs inside a lab namespace. See tests/lab/README.md for use from tests and
benchmarks.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

WAN_LINK = Path(__file__).with_name("wan_link.py")
MTU = 9000  # large frames: fewer packets for the user-space WAN link to carry
WAN_TABLE = 100  # routing table that sends forwarded packets into the WAN link's TUN
STOP_TIMEOUT_S = 5.0
CARRIER_TIMEOUT_S = 10.0

Kind = Literal["wan", "public", "router", "lan"]


class LabError(RuntimeError):
    """The lab cannot be built or used here (not root, a tool missing, a bad host name)."""


@dataclass(frozen=True)
class Host:
    name: str
    kind: Kind
    addr: str  # its own address (WAN for public hosts and routers, LAN inside a home)
    gateway: str | None
    router: str | None  # for LAN hosts: the home router whose WAN address they are seen from


HOSTS = (
    Host("wan", "wan", "198.18.0.1", None, None),
    Host("pub1", "public", "198.18.1.2", "198.18.1.1", None),
    Host("pub2", "public", "198.18.2.2", "198.18.2.1", None),
    Host("ha", "router", "198.18.3.2", "198.18.3.1", None),
    Host("hb", "router", "198.18.4.2", "198.18.4.1", None),
    Host("a1", "lan", "192.168.1.2", "192.168.1.1", "ha"),
    Host("a2", "lan", "192.168.1.3", "192.168.1.1", "ha"),
    Host("b1", "lan", "192.168.2.2", "192.168.2.1", "hb"),
    Host("b2", "lan", "192.168.2.3", "192.168.2.1", "hb"),
)
LAN_ADDR = {"ha": "192.168.1.1/24", "hb": "192.168.2.1/24"}
ATTACHED = [h.name for h in HOSTS if h.kind in ("public", "router")]  # hosts with a WAN link


class NatLab:
    """A running lab; use as a context manager (everything is undone on exit, even on error).

    `delay_ms`/`loss` start the WAN link with that one-way delay and loss (see `set_wan`);
    `seed` seeds its loss.
    """

    def __init__(self, delay_ms: float = 0.0, loss: float = 0.0, seed: int = 0) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.hosts = {h.name: h for h in HOSTS}
        self._seed = seed
        self._initial = (delay_ms, loss)
        self._made: list[str] = []  # namespaces created so far
        self._processes: list[subprocess.Popen[Any]] = []
        self._wan_link: subprocess.Popen[str] | None = None
        self._wan_link_lock = threading.RLock()  # tests may set the WAN from worker threads
        self._wan_rules = False
        self._closed = False

    # --- names -------------------------------------------------------------------------

    def ns(self, host: str) -> str:
        """The namespace of `host` (for `ip netns exec`, `ip -n`)."""
        self._host(host)
        return f"dl-{self.tag}-{host}"

    def prefix(self, host: str) -> list[str]:
        """`["ip", "netns", "exec", NS]`: the `command_prefix` that runs a program on `host`."""
        return ["ip", "netns", "exec", self.ns(host)]

    def addr(self, host: str) -> str:
        """The host's own IPv4 address (a LAN address for a1, a2, b1, b2)."""
        return self._host(host).addr

    def outside_addr(self, host: str) -> str:
        """The address the WAN sees `host` from: its router's for a LAN host, else its own."""
        h = self._host(host)
        return self.addr(h.router) if h.router else h.addr

    def _host(self, host: str) -> Host:
        try:
            return self.hosts[host]
        except KeyError:
            raise LabError(f"no host {host!r} in the lab; hosts: {', '.join(self.hosts)}") from None

    def _link(self, role: str) -> str:
        return f"{role}-{self.tag}"[:15]  # IFNAMSIZ

    @property
    def wan_link_dev(self) -> str:
        return self._link("wl")

    # --- programs ----------------------------------------------------------------------

    def popen(self, host: str, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start `argv` on `host`; the lab kills it on exit if it is still running."""
        process = subprocess.Popen([*self.prefix(host), *argv], **kw)
        self._processes.append(process)
        return process

    def run(self, host: str, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """`subprocess.run(argv, **kw)` on `host`."""
        return subprocess.run([*self.prefix(host), *argv], **kw)

    # --- links -------------------------------------------------------------------------

    def cut(self, host: str) -> None:
        """Pull `host`'s cable: its link goes down at the far end (the wan router or its home's
        bridge), so its own addresses and routes stay as they are. A router cuts its whole home."""
        self._far_end(host, "down")

    def restore(self, host: str) -> None:
        """Plug `host`'s cable back in."""
        self._far_end(host, "up")

    def _far_end(self, host: str, state: str) -> None:
        h = self._host(host)
        if h.kind == "wan":
            raise LabError("the wan router has no cable of its own; cut the hosts instead")
        where = h.router or "wan"
        _ip(
            "-n",
            self.ns(where),
            "link",
            "set",
            self._link(f"w{host}" if where == "wan" else f"p{host}"),
            state,
        )

    def set_wan(self, delay_ms: float, loss: float = 0.0, *, bypass: bool = True) -> None:
        """Hold every packet the wan router forwards for `delay_ms` (one way: a round trip
        between two attached hosts gains 2 * delay_ms) and drop the fraction `loss` of them.

        Takes effect before it returns. With (0, 0) the wan router forwards plainly, at
        kernel speed, unless `bypass=False` (to measure the emulator itself)."""
        if delay_ms < 0 or not 0.0 <= loss <= 1.0:
            raise LabError(f"bad WAN settings: delay_ms={delay_ms}, loss={loss}")
        with self._wan_link_lock:
            if delay_ms == 0 and loss == 0 and bypass:
                self._route_through_wan_link(False)
                if self._wan_link is not None:
                    self._wan_link_command("set 0 0")
                return
            if self._wan_link is None:
                self._start_wan_link()
            self._wan_link_command(f"set {delay_ms} {loss}")
            self._route_through_wan_link(True)

    def wan_link_stats(self) -> dict[str, float]:
        """The emulator's packets in and out, dropped, queued, and its CPU seconds ({} if it
        never ran)."""
        if self._wan_link is None:
            return {}
        return self._wan_link_command("stats")

    def _start_wan_link(self) -> None:
        process = self.popen(
            "wan",
            [sys.executable, str(WAN_LINK), "--dev", self.wan_link_dev, "--seed", str(self._seed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._wan_link = process
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise LabError(f"the WAN link emulator did not start (exit code {process.poll()}); see stderr")
        wan = self.ns("wan")
        dev = self.wan_link_dev
        _ip("-n", wan, "link", "set", dev, "mtu", str(MTU), "txqueuelen", "10000", "up")
        _ip("-n", wan, "route", "add", "default", "dev", dev, "table", str(WAN_TABLE))

    def _wan_link_command(self, line: str) -> dict[str, Any]:
        process = self._wan_link
        assert process is not None and process.stdin is not None and process.stdout is not None
        with self._wan_link_lock:
            process.stdin.write(line + "\n")
            process.stdin.flush()
            reply = process.stdout.readline()
        if not reply:
            raise LabError(f"the WAN link emulator died (exit code {process.poll()}); see stderr")
        answer: dict[str, Any] = json.loads(reply)
        if "error" in answer:
            raise LabError(f"WAN link emulator: {answer['error']}")
        return answer

    def _route_through_wan_link(self, on: bool) -> None:
        """Packets coming in from a host's link go to the WAN link's table (whose only route
        is the TUN); packets the emulator writes back come in from the TUN and use `main`."""
        if on == self._wan_rules:
            return
        verb = "add" if on else "del"
        lines = [f"rule {verb} iif {self._link('w' + host)} table {WAN_TABLE} pref 100" for host in ATTACHED]
        _ip_batch(self.ns("wan"), lines)
        self._wan_rules = on

    # --- counters ----------------------------------------------------------------------

    def wan_counters(self) -> dict[str, int]:
        """Bytes the wan router forwarded, by counter: `from_X`/`to_X` for every attached host
        X (pub1, pub2, ha, hb) and `pair_X_Y` for both directions between X and Y."""
        out = _ip_netns_output(self.ns("wan"), ["nft", "-j", "list", "counters", "table", "inet", "lab"])
        counters = {}
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                counters[item["counter"]["name"]] = int(item["counter"]["bytes"])
        return counters

    def wan_bytes(self, host: str | None = None, *, between: tuple[str, str] | None = None) -> int:
        """Bytes forwarded by the wan router from and to `host`, or between the two hosts of
        `between` (both directions). A LAN host counts as its router: the WAN sees only that."""
        counters = self.wan_counters()
        if (host is None) == (between is None):
            raise LabError("wan_bytes takes a host or between=(host, host)")
        if host is not None:
            outside = self._attached(host)
            return counters[f"from_{outside}"] + counters[f"to_{outside}"]
        assert between is not None
        x, y = sorted(self._attached(h) for h in between)
        if x == y:
            raise LabError(
                f"{between} sit behind the same WAN address; the wan router sees none of their traffic"
            )
        return counters[f"pair_{x}_{y}"]

    def reset_wan_counters(self) -> None:
        _ip_netns_output(self.ns("wan"), ["nft", "reset", "counters", "table", "inet", "lab"])

    def _attached(self, host: str) -> str:
        h = self._host(host)
        if h.kind == "wan":
            raise LabError("the wan router is not one of its own counters' hosts")
        return h.router or h.name

    # --- building and tearing down -----------------------------------------------------

    def __enter__(self) -> NatLab:
        _check_can_build()
        try:
            self._build()
            if self._initial != (0.0, 0.0):
                self.set_wan(*self._initial)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        for h in HOSTS:
            _ip("netns", "add", self.ns(h.name))
            self._made.append(self.ns(h.name))
        for h in HOSTS:
            self._sysctls(h)
        batches: dict[str, list[str]] = {h.name: ["link set lo up"] for h in HOSTS}
        for h in HOSTS:
            if h.kind in ("public", "router"):
                self._wire_to_wan(h, batches)
        for router in ("ha", "hb"):
            bridge = self._link("br")
            batches[router] += [
                f"link add {bridge} mtu {MTU} type bridge",
                f"addr add {LAN_ADDR[router]} dev {bridge}",
                f"link set {bridge} up",
            ]
        for h in HOSTS:
            if h.kind == "lan":
                self._wire_to_lan(h, batches)
        for h in HOSTS:
            if h.gateway:
                batches[h.name].append(f"route add default via {h.gateway}")
        # Veth peers must exist before their other end is configured: create them all,
        # then configure each namespace in one `ip -batch` run.
        creates = {name: [line for line in lines if " type veth " in line] for name, lines in batches.items()}
        for name, lines in creates.items():
            _ip_batch(self.ns(name), lines)
        for name, lines in batches.items():
            _ip_batch(self.ns(name), [line for line in lines if " type veth " not in line])
        _nft(self.ns("wan"), self._wan_rules_text())
        for router in ("ha", "hb"):
            _nft(self.ns(router), self._home_router_rules(router))
        self._wait_for_carrier()

    def _wait_for_carrier(self) -> None:
        """A veth reports carrier a moment after both ends are up; until then it drops packets."""
        deadline = time.monotonic() + CARRIER_TIMEOUT_S
        waiting = [h.name for h in HOSTS]
        while waiting:
            links = json.loads(_ip_netns_output(self.ns(waiting[0]), ["ip", "-j", "link", "show"]))
            if all(link["operstate"] in ("UP", "UNKNOWN") for link in links):
                waiting.pop(0)
            elif time.monotonic() > deadline:
                raise LabError(f"links in {waiting[0]} still down after {CARRIER_TIMEOUT_S} s: {links}")
            else:
                time.sleep(0.02)

    def _sysctls(self, h: Host) -> None:
        settings = {"net/ipv6/conf/all/disable_ipv6": "1", "net/ipv6/conf/default/disable_ipv6": "1"}
        if h.kind in ("wan", "router"):
            settings["net/ipv4/ip_forward"] = "1"
        if h.kind == "wan":
            # Packets come back out of the TUN with sources that route via the veths.
            settings |= {"net/ipv4/conf/all/rp_filter": "0", "net/ipv4/conf/default/rp_filter": "0"}
        script = "; ".join(f"echo {value} > /proc/sys/{key}" for key, value in settings.items())
        subprocess.run([*self.prefix(h.name), "sh", "-ec", script], check=True, capture_output=True)

    def _wire_to_wan(self, h: Host, batches: dict[str, list[str]]) -> None:
        outer, inner = self._link(f"w{h.name}"), self._link("wan" if h.kind == "router" else "eth")
        gateway = h.gateway
        assert gateway is not None
        batches["wan"] += [
            f"link add {outer} mtu {MTU} type veth peer name {inner} netns {self.ns(h.name)} mtu {MTU}",
            f"addr add {gateway}/24 dev {outer}",
            f"link set {outer} up",
        ]
        batches[h.name] += [f"addr add {h.addr}/24 dev {inner}", f"link set {inner} up"]

    def _wire_to_lan(self, h: Host, batches: dict[str, list[str]]) -> None:
        assert h.router is not None
        outer, inner = self._link(f"p{h.name}"), self._link("eth")
        batches[h.router] += [
            f"link add {outer} mtu {MTU} type veth peer name {inner} netns {self.ns(h.name)} mtu {MTU}",
            f"link set {outer} master {self._link('br')}",
            f"link set {outer} up",
        ]
        batches[h.name] += [f"addr add {h.addr}/24 dev {inner}", f"link set {inner} up"]

    def _wan_rules_text(self) -> str:
        """Named counters of forwarded bytes. Each packet is counted once, on the way in:
        one that passes through the WAN link emulator is forwarded twice (host -> TUN,
        TUN -> host), and the second pass is skipped."""
        addr = {name: self.hosts[name].addr for name in ATTACHED}
        counters = [f"counter from_{n} {{}}\ncounter to_{n} {{}}" for n in ATTACHED]
        rules = [f'iifname "{self.wan_link_dev}" return']
        for n in ATTACHED:
            rules += [
                f'ip saddr {addr[n]} counter name "from_{n}"',
                f'ip daddr {addr[n]} counter name "to_{n}"',
            ]
        for x, y in itertools.combinations(sorted(ATTACHED), 2):
            counters.append(f"counter pair_{x}_{y} {{}}")
            pair = f"{{ {addr[x]}, {addr[y]} }}"
            rules.append(f'ip saddr {pair} ip daddr {pair} counter name "pair_{x}_{y}"')
        body = "\n".join(rules)
        return (
            "table inet lab {\n"
            + "\n".join(counters)
            + "\nchain forward {\ntype filter hook forward priority filter; policy accept;\n"
            + body
            + "\n}\n}\n"
        )

    def _home_router_rules(self, router: str) -> str:
        """A typical home router: masquerade out of the WAN port (Linux keeps the inside port
        when it is free), replies let in, everything unsolicited from the WAN dropped."""
        wan = self._link("wan")
        return f"""
table ip nat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{wan}" masquerade
  }}
}}
table inet filter {{
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "{wan}" ct state established,related accept
    iifname "{wan}" drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    ct state invalid drop
    ct state established,related accept
    iifname "{wan}" drop
  }}
}}
"""

    def close(self) -> None:
        """Stop every program started in the lab and delete its namespaces (and so its links)."""
        if self._closed:
            return
        self._closed = True
        for process in reversed(self._processes):
            _stop(process)
        for ns in self._made:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:  # started in the lab some other way, e.g. start_node(command_prefix=...)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made.clear()


def _check_can_build() -> None:
    if os.geteuid() != 0:
        raise LabError("the NAT lab needs root (network namespaces, nftables); run the tests as root")
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            raise LabError(f"the NAT lab needs `{tool}`: apt-get install {package} (`make test` does)")
    if not os.path.exists("/dev/net/tun"):
        raise LabError("the NAT lab's WAN link needs /dev/net/tun")


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode:
        raise LabError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _ip_batch(ns: str, lines: list[str]) -> None:
    if not lines:
        return
    result = subprocess.run(
        ["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n", capture_output=True, text=True
    )
    if result.returncode:
        raise LabError(f"ip -n {ns} -batch: {result.stderr.strip()}\n" + "\n".join(lines))


def _nft(ns: str, rules: str) -> None:
    result = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, capture_output=True, text=True
    )
    if result.returncode:
        raise LabError(f"nft in {ns}: {result.stderr.strip()}\n{rules}")


def _ip_netns_output(ns: str, argv: list[str]) -> str:
    result = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True)
    if result.returncode:
        raise LabError(f"{' '.join(argv)} in {ns}: {result.stderr.strip()}")
    return result.stdout


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
