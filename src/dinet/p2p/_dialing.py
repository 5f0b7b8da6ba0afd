"""Dialing a peer at several addresses at once: direct ones first, circuits after a head start.

A peer behind NAT advertises LAN addresses that time out from anywhere else, and circuit
addresses through its relays that always work but cost a detour. So the direct addresses
are dialed one after another, each `STAGGER_S` after the last unless that one failed
sooner (happy eyeballs), the circuits `CIRCUIT_AFTER_S` after the start or as soon as
every direct dial has failed, and the first connection wins; the others are cancelled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import multiaddr
import trio
from libp2p.peer.id import ID

from dinet.errors import PeerUnreachable
from dinet.p2p.relay import dial_circuit
from dinet.wire.ids import PeerId

if TYPE_CHECKING:
    from dinet.p2p.host import PeerHost

STAGGER_S = 0.25
CIRCUIT_AFTER_S = 1.0
_CIRCUIT = "/p2p-circuit"
_WILDCARDS = ("/ip4/0.0.0.0/", "/ip6/::/")


def is_circuit(addr: str) -> bool:
    return _CIRCUIT in addr


def bare(addr: str) -> str:
    """`addr` without the /p2p/<peer id> that ends it, if one does (a circuit address keeps
    its relay's: only the last part names the peer)."""
    head, sep, last = addr.rpartition("/p2p/")
    return head if sep and "/" not in last else addr


def relay_of(circuit: str) -> tuple[str, PeerId]:
    """The relay's bare address (may be empty) and peer id in a bare circuit address."""
    before = circuit.split(_CIRCUIT, 1)[0]
    at, _, relay = before.rpartition("/p2p/")
    if not relay:
        raise PeerUnreachable(f"a circuit address without a relay: {circuit!r}")
    return at, PeerId(relay)


def dial_plan(peer_id: PeerId, addrs: list[str], me: PeerId) -> list[str]:
    """`addrs` made bare, deduplicated and in dialing order: direct ones (loopback last),
    then circuits. Wildcards (they would reach this machine) and circuits through the
    peer itself or through this host are left out."""
    seen: dict[str, None] = {}
    for addr in addrs:
        b = bare(addr)
        if not b or b.startswith(_WILDCARDS):
            continue
        if is_circuit(b):
            try:
                _, relay = relay_of(b)
            except PeerUnreachable:  # a peer's advert may carry anything
                continue
            if relay in (peer_id, me):
                continue
        seen.setdefault(b, None)
    plan = list(seen)
    return sorted(plan, key=lambda a: (is_circuit(a), _is_loopback(a)))


def _is_loopback(addr: str) -> bool:
    return addr.startswith(("/ip4/127.", "/ip6/::1/"))


async def dial_first(host: PeerHost, peer_id: PeerId, plan: list[str], problems: list[str]) -> None:
    """Connect to `peer_id` at the first address of `plan` (see `dial_plan`) that answers;
    PeerUnreachable, naming every failure, if none does. Each failure is added to
    `problems` as it happens (for a caller whose deadline comes first)."""
    direct = [a for a in plan if not is_circuit(a)]
    circuits = [a for a in plan if is_circuit(a)]
    directs_failed = trio.Event()
    failed_directs = 0
    won = False
    if not direct:
        directs_failed.set()

    async def attempt(addr: str, failed: trio.Event, task_status: trio.TaskStatus[None]) -> None:  # type: ignore[name-defined]
        nonlocal failed_directs, won
        task_status.started()
        try:
            if is_circuit(addr):
                relay_addr, relay = relay_of(addr)
                await dial_circuit(host, relay_addr, relay, peer_id)
            else:
                await _dial_direct(host, addr, peer_id)
        except PeerUnreachable as exc:
            problems.append(f"{addr}: {exc}")
            if not is_circuit(addr):
                failed_directs += 1
                if failed_directs == len(direct):
                    directs_failed.set()
            failed.set()
            return
        won = True
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        for addr in direct:
            failed = trio.Event()
            await nursery.start(attempt, addr, failed)
            with trio.move_on_after(STAGGER_S):
                await failed.wait()
        with trio.move_on_at(start + CIRCUIT_AFTER_S):
            await directs_failed.wait()
        for addr in circuits:
            failed = trio.Event()
            await nursery.start(attempt, addr, failed)
            with trio.move_on_after(STAGGER_S):
                await failed.wait()
    if not won:
        raise PeerUnreachable(f"cannot reach {peer_id}: " + "; ".join(problems or ["no address"]))


async def _dial_direct(host: PeerHost, addr: str, peer_id: PeerId) -> None:
    """A new direct connection at exactly `addr` (the swarm's own dial picks one address
    of each kind from everything it ever heard of the peer)."""
    try:
        await host.raw.get_network().dial_addr(multiaddr.Multiaddr(addr), ID.from_base58(peer_id))
    except Exception as exc:  # the swarm raises assorted types when a dial fails
        cause = exc.__cause__ or exc
        raise PeerUnreachable(f"{type(cause).__name__}: {cause}") from None
