"""This host's addresses: those it listens on, those peers see it at, those the operator
announced or the router mapped; which of them peers can dial back, and which it advertises.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.utils.address_validation import expand_wildcard_address

from dinet.errors import ConfigError
from dinet.p2p.autonat import ask_dial_back
from dinet.p2p.reachability import AGREE, NOT_CHECKED, DialBacks, Reachability
from dinet.p2p.upnp import keep_ports_mapped
from dinet.p2p.websockets import is_websocket
from dinet.wire.ids import PeerId

logger = logging.getLogger(__name__)

RECHECK_S = 600.0  # then an address is asked about again; an answer counts twice as long,
# so that the node stays what it is while the new answers come in
POLL_S = 2.0  # how often to look for new addresses and new peers to ask
WANT = AGREE + 1  # answers sought per address: two agreeing out of three decide
_MAX_ASKS = 8  # requests in flight in one round


class AddressBook:
    """Which addresses this host advertises, found out by asking peers to dial it back."""

    def __init__(self, raw: IHost, peer_id: PeerId, on_change: Callable[[], None] = lambda: None) -> None:
        self._raw = raw
        self._on_change = on_change  # told when the state or the confirmed addresses change
        self._peer_id = peer_id
        self._announced: list[str] = []
        self._mapped: list[str] = []  # by the home router (UPnP)
        self._dial_backs = DialBacks(fresh_for=2 * RECHECK_S)
        self._asked: dict[tuple[str, PeerId], float] = {}
        self._state = NOT_CHECKED

    def announce(self, addrs: Sequence[str]) -> None:
        """Addresses the operator knows reach us (a forwarded port): advertised as given."""
        bare = []
        for addr in addrs:
            base, _, owner = addr.partition("/p2p/")
            if owner and owner != self._peer_id:
                raise ConfigError(f"--announce {addr} names another peer ({owner})")
            try:
                bare.append(str(multiaddr.Multiaddr(base)))
            except Exception as exc:  # the multiaddr package raises several unrelated types
                raise ConfigError(f"--announce {addr!r} is not a multiaddr ({exc})") from None
        self._announced = list(dict.fromkeys(bare))

    def set_mapped(self, addrs: Sequence[str]) -> None:
        """The router forwards these to us now: ask about them again (an observed address
        that failed before may be one of them)."""
        changed = set(addrs) ^ set(self._mapped)
        self._dial_backs.forget(changed)
        self._asked = {key: at for key, at in self._asked.items() if key[0] not in changed}
        self._mapped = list(addrs)

    # --- what we have ---

    def listen_addrs(self) -> list[str]:
        """Where we listen, a wildcard expanded to loopback and every interface."""
        out: list[str] = []
        for addr in self._raw.get_transport_addrs():
            base = str(addr).split("/p2p/")[0]
            if base.startswith("/ip4/0.0.0.0/"):
                rest = base.removeprefix("/ip4/0.0.0.0")
                out += [
                    f"/ip4/127.0.0.1{rest}",
                    *(str(a) for a in expand_wildcard_address(multiaddr.Multiaddr(base))),
                ]
            else:
                out.append(base)
        return list(dict.fromkeys(out))

    def observed(self) -> list[str]:
        """Our listen addresses at the IPs peers see us at (identify's observed address).

        A peer sees our outbound connections' ports; a dial-back can only reach a listen port.
        """
        manager = getattr(self._raw, "_observed_addr_manager", None)
        if manager is None:
            return []
        ips = {ip for a in manager.addrs(min_observers=1) if (ip := _ip_of(str(a))) is not None}
        out = []
        for listen in self._raw.get_transport_addrs():
            protocols = listen.protocols()
            if len(protocols) < 2 or protocols[0].name not in ("ip4", "ip6"):
                continue
            family, rest = protocols[0].name, str(listen).split("/p2p/")[0].split("/", 3)[3]
            out += [f"/{family}/{ip}/{rest}" for ip in sorted(ips) if (":" in ip) == (family == "ip6")]
        return list(dict.fromkeys(out))

    def _tcp_ports(self) -> list[int]:
        ports = {a.value_for_protocol("tcp") for a in self._raw.get_transport_addrs() if "/tcp/" in str(a)}
        return sorted(int(p) for p in ports if p)

    def candidates(self) -> list[str]:
        """Every address peers may be asked to dial back. Not the WebSocket ones: those are
        for browsers, which cannot dial back, and a peer without a WebSocket transport would
        report them unreachable (and so this host private)."""
        every = [*self.listen_addrs(), *self.observed(), *self._mapped, *self._announced]
        return [a for a in dict.fromkeys(every) if not is_websocket(a)]

    # --- what we tell ---

    def reachability(self) -> Reachability:
        return self._state

    def advertised(self) -> list[str]:
        """Confirmed and announced addresses; until peers have decided, the listen addresses too."""
        addrs = list(self._state.addrs) or self._announced
        if self._state.state == "unknown":
            addrs = [*addrs, *self.listen_addrs()]
        return [f"{a}/p2p/{self._peer_id}" for a in dict.fromkeys(addrs)]

    # --- finding out ---

    async def keep_checked(
        self,
        upnp: bool = False,
        *,
        # trio-typing's stubs, which libp2p pulls in, hide trio's own TaskStatus from mypy.
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,  # type: ignore[name-defined]
    ) -> None:
        """Ask peers to dial us back: new addresses and new peers at once, the rest every
        RECHECK_S. With `upnp`, the router's forwarded ports are among the addresses."""
        self._state = Reachability("unknown", "not checked yet")
        task_status.started()
        async with trio.open_nursery() as nursery:
            if upnp:  # its address is the observed one, often: ask once it is mapped
                await nursery.start(keep_ports_mapped, self._tcp_ports, self.set_mapped)
            while True:
                await self.check_once()
                await trio.sleep(POLL_S)

    async def check_once(self) -> None:
        now = trio.current_time()
        candidates = self.candidates()
        self._dial_backs.keep_only(set(candidates))
        peers = [PeerId(p.to_base58()) for p in self._raw.get_connected_peers()]
        random.shuffle(peers)
        asks: list[tuple[str, PeerId]] = []
        for addr in candidates:
            wanted = WANT - len(self._dial_backs.answered(addr, now, within=RECHECK_S))
            fresh = [p for p in peers if now - self._asked.get((addr, p), -math.inf) >= RECHECK_S]
            asks += [(addr, p) for p in fresh[: max(0, wanted)]]
        async with trio.open_nursery() as nursery:
            for addr, peer in asks[:_MAX_ASKS]:
                self._asked[addr, peer] = now
                nursery.start_soon(self._ask, addr, peer)
        self._asked = {k: t for k, t in self._asked.items() if now - t < RECHECK_S and k[0] in candidates}
        self._decide(candidates, len(peers))

    async def _ask(self, addr: str, peer: PeerId) -> None:
        answer = await ask_dial_back(self._raw, ID.from_base58(peer), addr)
        if answer != "refused":
            self._dial_backs.record(addr, peer, answer == "reached", trio.current_time())

    def _decide(self, candidates: list[str], peers: int) -> None:
        state = self._dial_backs.decide(candidates, self._announced, peers, trio.current_time())
        if (state.state, state.addrs) != (self._state.state, self._state.addrs):
            logger.info("reachability: %s (%s)", state.state, state.reason)
            self._state = state
            self._on_change()
        self._state = state


def _ip_of(addr: str) -> str | None:
    parts = addr.split("/")
    return parts[2] if len(parts) > 2 and parts[1] in ("ip4", "ip6") else None
