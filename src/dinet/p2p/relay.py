"""Circuit relay v2 from a relay's clients: reservations kept on relays, and circuits dialed.

A host that is not public keeps a reservation on `want` relays among its peers (peers
whose identify lists the HOP protocol, lowest round trip first), renews each halfway
through its term, notices when a relay's connection is gone and reserves elsewhere. Its
circuit addresses (`/…/p2p/<relay>/p2p-circuit/p2p/<me>`) follow from what it holds.

`dial_circuit` opens one circuit through exactly the relay its address names. (The
library's `CircuitV2Transport.dial` first tries every circuit address stored for the
target, each without a time limit, and stores circuit addresses for every address of
every relay it used, forever: a dead relay then stalls every later dial.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import multiaddr
import trio
from libp2p.abc import INetConn
from libp2p.connection_types import ConnectionType
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeerId
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

from dinet.errors import PeerUnreachable
from dinet.p2p.gate import refusal_in
from dinet.wire.ids import PeerId

if TYPE_CHECKING:
    from dinet.p2p.host import PeerHost

logger = logging.getLogger(__name__)

RESERVE_S = 10.0  # a relay must answer a reservation request by then
CHECK_S = 1.0  # how often held reservations are checked (relay gone, renewal due)
SHORT_CHECK_S = 0.2  # ... and connected peers looked at for relays, while it holds too few
RETRY_RELAY_S = 30.0  # a relay that refused is not asked again for this long
CIRCUIT_ADDRS_PER_RELAY = 2


@dataclass(frozen=True)
class RelayPolicy:
    """What a relay grants (see NodeSettings: relay_*)."""

    max_reservations: int = 128
    max_circuits: int = 256  # at once, over all reservations
    circuit_bytes: int = 32 << 20  # both directions together; 0: unlimited
    circuit_s: float = 900.0  # 0: unlimited
    reservation_s: int = 3600


@dataclass(frozen=True)
class Held:
    """A reservation a relay granted this host."""

    relay: PeerId
    granted_at: float  # unix time
    expires_at: float  # unix time, as the relay said
    addrs: tuple[str, ...]  # where the relay is, each ending in /p2p/<relay>

    def renew_due(self, now: float) -> bool:
        return now >= self.granted_at + (self.expires_at - self.granted_at) / 2


class ReservationKeeper:
    """Keeps reservations on `want` relays while the host is not public (forever, in `run`)."""

    def __init__(self, host: PeerHost, want: int) -> None:
        self._host = host
        self.want = want
        self.held: dict[PeerId, Held] = {}
        self.made = 0  # reservations made or renewed since start
        self._refused: dict[PeerId, float] = {}  # relay -> trio time it may be asked again
        self._changed = trio.Event()

    async def run(self) -> None:
        while True:
            if self.want > 0 and self._host.reachability().state != "public":
                await self._tend()
                with trio.move_on_after(CHECK_S if len(self.held) >= self.want else SHORT_CHECK_S):
                    await self._host.reachability_changed()
            else:
                self._set(dict())
                await self._host.reachability_changed()

    async def changed(self) -> None:
        """Return when the reservations held change."""
        await self._changed.wait()

    async def _tend(self) -> None:
        held = {r: h for r, h in self.held.items() if self._host.is_connected(r)}
        for gone in self.held.keys() - held.keys():
            logger.info("relay %s is gone: its reservation with it", gone)
        now = time.time()
        for relay, h in list(held.items()):
            if h.renew_due(now):
                renewed = await self._reserve(relay)
                if renewed is None:
                    del held[relay]
                else:
                    held[relay] = renewed
        for relay in self._candidates(held):
            if len(held) >= self.want:
                break
            got = await self._reserve(relay)
            if got is not None:
                held[relay] = got
                logger.info("reserved a relay slot on %s (until %s)", relay, time.ctime(got.expires_at))
        self._set(held)

    def _set(self, held: dict[PeerId, Held]) -> None:
        if held.keys() != self.held.keys():
            self._changed.set()
            self._changed = trio.Event()
        self.held = held

    def _candidates(self, held: dict[PeerId, Held]) -> list[PeerId]:
        now = trio.current_time()
        relays = [
            p
            for p in self._host.connected_peers()
            if p not in held and self._refused.get(p, 0.0) <= now and self._host.speaks(p, HOP_PROTOCOL)
        ]
        return sorted(relays, key=lambda p: self._host.rtt_ms(p) or float("inf"))

    async def _reserve(self, relay: PeerId) -> Held | None:
        try:
            with trio.fail_after(RESERVE_S):
                held = await reserve(self._host, relay)
        except (PeerUnreachable, trio.TooSlowError) as exc:
            logger.info("no reservation on %s: %s", relay, exc or "it did not answer")
            self._refused[relay] = trio.current_time() + RETRY_RELAY_S
            return None
        self.made += 1
        return held

    def circuit_addrs(self) -> list[str]:
        """This host's addresses through the relays it holds a reservation on (ending in /p2p/<me>)."""
        me = self._host.peer_id
        out = []
        for h in self.held.values():
            for at in h.addrs[:CIRCUIT_ADDRS_PER_RELAY]:
                out.append(f"{at}/p2p-circuit/p2p/{me}")
        return out


async def reserve(host: PeerHost, relay: PeerId) -> Held:
    """Ask `relay` (connected) for a reservation; PeerUnreachable if it refuses or breaks off."""
    raw = host.raw
    try:
        stream = await raw.new_stream(ID.from_base58(relay), [HOP_PROTOCOL])
    except Exception as exc:  # the swarm raises assorted types when a stream cannot open
        raise PeerUnreachable(f"no HOP stream: {exc}") from None
    try:
        await write_delimited_msg(stream, HopMessage(type=HopMessage.RESERVE))
        reply = await read_delimited_msg(stream, HopMessage)
    except Exception as exc:  # stream errors and malformed replies alike
        raise PeerUnreachable(f"the reservation broke off: {exc!r}") from None
    finally:
        await _close(stream)
    status = reply.status if reply.HasField("status") else StatusCode.OK
    if status != StatusCode.OK or not reply.HasField("reservation"):
        raise PeerUnreachable(f"refused: {_status_name(status)}")
    addrs = _relay_addrs(host, relay, reply.reservation.addrs)
    return Held(relay, time.time(), float(reply.reservation.expire), tuple(addrs))


def _relay_addrs(host: PeerHost, relay: PeerId, announced: Iterable[bytes]) -> list[str]:
    """Where others reach the relay: where this host reached it first (proven from here), then
    what the relay announced."""
    out = [f"{a}/p2p/{relay}" for a in host.remote_addrs(relay)]
    for raw in announced:
        try:
            addr = str(multiaddr.Multiaddr(raw))
        except Exception:  # a relay's reply is untrusted input
            continue
        full = addr if addr.endswith(f"/p2p/{relay}") else f"{addr}/p2p/{relay}"
        if "/p2p-circuit" not in full and full not in out:
            out.append(full)
    return out


async def dial_circuit(host: PeerHost, relay_addr: str, relay: PeerId, target: PeerId) -> INetConn:
    """A connection to `target` through `relay` (at `relay_addr`, a bare multiaddr or empty);
    PeerUnreachable if the relay or the target refuses."""
    raw = host.raw
    if not host.is_connected(relay):
        if not relay_addr:
            raise PeerUnreachable(f"relay {relay} is not connected and has no address")
        await host.connect(relay, [f"{relay_addr}/p2p/{relay}"])
    try:
        stream = await raw.new_stream(ID.from_base58(relay), [HOP_PROTOCOL])
    except Exception as exc:  # the swarm raises assorted types when a stream cannot open
        raise PeerUnreachable(f"relay {relay} opens no HOP stream: {exc}") from None
    try:
        connect = HopMessage(
            type=HopMessage.CONNECT, peer=CircuitPeerId(id=ID.from_base58(target).to_bytes())
        )
        await write_delimited_msg(stream, connect)
        reply = await read_delimited_msg(stream, HopMessage)
        status = reply.status if reply.HasField("status") else StatusCode.OK
        if status != StatusCode.OK:
            raise PeerUnreachable(f"relay {relay} refused a circuit to {target}: {_status_name(status)}")
        circuit = multiaddr.Multiaddr(f"/p2p/{relay}/p2p-circuit/p2p/{target}")
        conn = RawConnection(
            stream=stream, initiator=True, connection_type=ConnectionType.RELAYED, addresses=[circuit]
        )
        return await raw.upgrade_outbound_connection(conn, ID.from_base58(target))
    except PeerUnreachable:
        await _reset(stream)
        raise
    except Exception as exc:  # stream errors, malformed replies, a failed upgrade
        await _reset(stream)
        why = refusal_in(exc) or repr(exc)  # a gate's refusal lies under the swarm's wrapping
        raise PeerUnreachable(f"circuit through {relay} to {target} failed: {why}") from None
    except BaseException:
        await _reset(stream)
        raise


def _status_name(status: int) -> str:
    try:
        return StatusCode(status).name
    except ValueError:  # a relay's reply is untrusted input
        return f"status {status}"


async def _close(stream: object) -> None:
    try:
        await stream.close()  # type: ignore[attr-defined]
    except Exception:  # already gone
        pass


async def _reset(stream: object) -> None:
    with trio.CancelScope(shield=True):
        try:
            await stream.reset()  # type: ignore[attr-defined]
        except Exception:  # already gone
            pass
