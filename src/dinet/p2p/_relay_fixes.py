"""py-libp2p 0.8.1's circuit relay v2, with its relay side fixed and its limits enforced.

Subclasses, not patches. What they change, and why:

- `LiveReservations`: `can_accept_reservation` counted the reservations of peers that had
  disconnected until their TTL ran out (an hour), so a relay filled up with stale ones and
  refused everyone. A reservation is only valid while its peer is connected: only those count.
- `BoundedRelay._handle_connect`: the library kept circuits in a dict keyed by peer id, so a
  second circuit to the same node replaced the first, and the first one's teardown closed
  the second. Here every circuit is its own object, torn down alone.
- Its pump knew only mplex's end-of-stream: on yamux every close logged errors and retried
  for ~0.6 s. Here an end of stream half-closes the other side, as TCP would.
- Limits: the byte budget of a circuit (both directions together) and its duration are
  enforced on every circuit, idle or not (the library checked the duration only when data
  arrived), as is a cap on circuits at once.
- One HOP message per stream, as the spec's other implementations do: the library kept
  reading after each exchange and logged an error for every peer that closed its stream.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

import trio
from libp2p.abc import IHost, INetStream
from libp2p.network.stream.exceptions import StreamEOF, StreamError
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage, Limit, StopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeerId
from libp2p.relay.circuit_v2.protocol import (
    PROTOCOL_ID,
    STOP_PROTOCOL_ID,
    CircuitV2Protocol,
    _is_relayed_stream,
)
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.resources import RelayLimits, RelayResourceManager
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

from dinet.wire.ids import PeerId

if TYPE_CHECKING:
    from dinet.p2p.relay import RelayPolicy

logger = logging.getLogger(__name__)

HOP_READ_S = 10.0  # a peer that opens a HOP stream must say what it wants by then
STOP_S = 10.0  # the target must accept a circuit by then
_READ_SIZE = 64 * 1024


class LiveReservations(RelayResourceManager):
    """Reservations of connected peers only (see the module docstring)."""

    def can_accept_reservation(self, peer_id: ID) -> bool:
        self._clean_expired()
        for gone in [p for p in self._reservations if p != peer_id and not self._is_peer_connected(p)]:
            del self._reservations[gone]
        if peer_id in self._reservations:
            return True
        return len(self._reservations) < self.limits.max_reservations


class _Circuit:
    """One relayed circuit: two streams, one byte budget for both directions."""

    def __init__(self, source: ID, target: ID, budget: int, counters: Counter[str]) -> None:
        self.source = source
        self.target = target
        self.remaining = budget  # 0: unlimited
        self._limited = budget > 0
        self._counters = counters
        self.cut: str | None = None  # why it was ended by force

    async def run(self, a: INetStream, b: INetStream, duration_s: float) -> None:
        """Pump both ways until both sides have ended, the budget is spent or time is up."""
        with trio.move_on_after(duration_s if duration_s > 0 else float("inf")) as timer:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, a, b, nursery.cancel_scope)
                nursery.start_soon(self._pump, b, a, nursery.cancel_scope)
        if timer.cancelled_caught:
            self.cut = f"its {duration_s:g} s are up"
        if self.cut is None:
            return
        logger.info("relay: circuit %s -> %s cut: %s", self.source, self.target, self.cut)
        self._counters["cut"] += 1
        with trio.CancelScope(shield=True):
            for stream in (a, b):
                try:
                    await stream.reset()
                except StreamError:
                    pass  # already gone

    async def _pump(self, src: INetStream, dst: INetStream, circuit: trio.CancelScope) -> None:
        while True:
            try:
                data = await src.read(_READ_SIZE)
            except StreamEOF:
                data = b""
            except StreamError as exc:  # a side reset or its connection died
                self._end(circuit, f"a side broke ({type(exc).__name__})")
                return
            if not data:  # this direction is done: pass the end on, keep the other going
                try:
                    await dst.close()
                except StreamError:
                    pass
                return
            if self._limited:
                if len(data) > self.remaining:
                    self._end(circuit, "its byte budget is spent")
                    return
                self.remaining -= len(data)
            try:
                await dst.write(data)
            except StreamError as exc:
                self._end(circuit, f"a side broke ({type(exc).__name__})")
                return
            self._counters["bytes"] += len(data)

    def _end(self, circuit: trio.CancelScope, why: str) -> None:
        if self.cut is None:
            self.cut = why
        circuit.cancel()


class BoundedRelay(CircuitV2Protocol):
    """The relay protocol of a host: STOP always (it accepts relayed connections), HOP
    (it relays for others) while `serve_hop(True)`, with `policy`'s limits enforced."""

    def __init__(self, host: IHost, policy: RelayPolicy) -> None:
        limits = RelayLimits(
            duration=int(policy.circuit_s),
            data=policy.circuit_bytes,
            max_circuit_conns=policy.max_circuits,
            max_reservations=policy.max_reservations,
            reservation_ttl=policy.reservation_s,
        )
        super().__init__(host, limits, allow_hop=False)
        self.resource_manager = LiveReservations(limits, host)
        self.policy = policy
        self.circuits: set[_Circuit] = set()
        self.counters: Counter[str] = Counter()  # circuits, cut, bytes, reservations
        self.serving_hop = False

    def serve_hop(self, on: bool) -> None:
        if on and not self.serving_hop:
            self.host.set_stream_handler(PROTOCOL_ID, self._handle_hop_stream)
        elif not on and self.serving_hop:
            self.host.remove_stream_handler(PROTOCOL_ID)
        self.serving_hop = on
        logger.info("relay service %s", "on" if on else "off")

    def reservations(self) -> int:
        """Reservations held by connected peers."""
        return len(self.reserved_peers())

    def reserved_peers(self) -> set[PeerId]:
        """The connected peers holding a reservation here."""
        manager = self.resource_manager
        held = [p for p in list(manager._reservations) if manager.get_reservation(p) is not None]
        return {PeerId(p.to_base58()) for p in held}

    def circuits_open(self) -> int:
        """Circuits relayed now, as the reservations count them."""
        return sum(r.active_connections for r in list(self.resource_manager._reservations.values()))

    async def _handle_hop_stream(self, stream: INetStream) -> None:
        try:
            if _is_relayed_stream(stream):  # the spec: no relaying over relayed connections
                await self._refuse(stream, StatusCode.PERMISSION_DENIED)
                return
            with trio.fail_after(HOP_READ_S):
                message = await read_delimited_msg(stream, HopMessage)
            if message.type == HopMessage.RESERVE:
                await self._handle_reserve(stream, message)
                if self.resource_manager.get_reservation(stream.muxed_conn.peer_id) is not None:
                    self.counters["reservations"] += 1
                await self._close_stream(stream)
            elif message.type == HopMessage.CONNECT:
                await self._handle_connect(stream, message)
            else:
                await self._refuse(stream, StatusCode.UNEXPECTED_MESSAGE)
        except (trio.TooSlowError, StreamError) as exc:
            logger.debug("relay: HOP stream from %s ended: %r", stream.muxed_conn.peer_id, exc)
            await _reset(stream)
        except Exception as exc:  # a malformed protobuf raises assorted types
            logger.debug("relay: bad HOP message from %s: %r", stream.muxed_conn.peer_id, exc)
            await self._refuse(stream, StatusCode.MALFORMED_MESSAGE)

    async def _handle_connect(self, stream: INetStream, msg: HopMessage) -> None:
        source = stream.muxed_conn.peer_id
        target = ID(msg.peer.id)
        reservation = self.resource_manager.get_reservation(target)
        if reservation is None:
            await self._refuse(stream, StatusCode.NO_RESERVATION)
            return
        if len(self.circuits) >= self.policy.max_circuits or not reservation.can_accept_connection():
            await self._refuse(stream, StatusCode.RESOURCE_LIMIT_EXCEEDED)
            return
        try:
            dst = await self._open_stop(source, target)
        except (trio.TooSlowError, StreamError, ConnectionError) as exc:
            logger.info("relay: %s refused or missed a circuit from %s: %s", target, source, exc)
            await self._refuse(stream, StatusCode.CONNECTION_FAILED)
            return
        circuit = _Circuit(source, target, self.limits.data, self.counters)
        reservation.active_connections += 1
        self.circuits.add(circuit)
        self.counters["circuits"] += 1
        try:
            await self._send_status(stream, StatusCode.OK, "circuit open", limit=self._limit())
            await circuit.run(stream, dst, self.policy.circuit_s)
        finally:
            self.circuits.discard(circuit)
            self.resource_manager.release_connection(target)

    async def _open_stop(self, source: ID, target: ID) -> INetStream:
        """A STOP stream to `target` that has accepted a circuit from `source`."""
        with trio.fail_after(STOP_S):
            try:
                dst = await self.host.new_stream(target, [STOP_PROTOCOL_ID])
            except StreamError:
                raise
            except Exception as exc:  # the swarm raises assorted types when no stream opens
                raise ConnectionError(f"no STOP stream: {exc}") from None
            try:
                connect = StopMessage(
                    type=StopMessage.CONNECT, peer=CircuitPeerId(id=source.to_bytes()), limit=self._limit()
                )
                await write_delimited_msg(dst, connect)
                reply = await read_delimited_msg(dst, StopMessage)
            except BaseException:
                await _reset(dst)
                raise
        if reply.HasField("status") and reply.status != StatusCode.OK:
            await _reset(dst)
            raise ConnectionError(f"status {reply.status}")
        return dst

    def _limit(self) -> Limit:
        return Limit(duration=int(self.policy.circuit_s), data=self.policy.circuit_bytes)

    async def _refuse(self, stream: INetStream, code: StatusCode) -> None:
        """Say no, then end the stream (a close, so the status is read before the end)."""
        await self._send_status(stream, code, code.name)
        await self._close_stream(stream)


async def _reset(stream: INetStream) -> None:
    try:
        await stream.reset()
    except StreamError:
        pass  # already gone
