"""AutoNAT v1 (`/libp2p/autonat/1.0.0`, py-libp2p's messages) with a dial-back that proves something.

As shipped, py-libp2p's server dials back with `host.connect`, which returns at once on
the connection the request came over: every address "succeeds". Here the server opens
a fresh connection (TCP, then the Noise handshake, which proves the peer id) to each
address, with a time limit, and closes it. It dials only concrete addresses at the IP
the request came from (so nobody can make it dial a third party), never over a relayed
connection, and refuses beyond its rate limits. A refusal says nothing about the asker.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Literal

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.connection_types import ConnectionType
from libp2p.host.autonat.autonat import AUTONAT_PROTOCOL_ID
from libp2p.host.autonat.pb.autonat_pb2 import Message
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.security.pnet.protector import new_protected_conn
from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_limited

logger = logging.getLogger(__name__)

PROTOCOL = str(AUTONAT_PROTOCOL_ID)
DIAL_BACK_TIMEOUT_S = 5.0  # one fresh connection: TCP and the Noise handshake
ASK_TIMEOUT_S = DIAL_BACK_TIMEOUT_S + 10.0  # the asker's limit for the whole exchange
_MAX_MESSAGE = 8192
_MAX_ADDRS = 4  # addresses dialed for one request (at once)
_MAX_DIALING = 8  # requests served at once, for all peers together
_PER_PEER = 12  # requests served per peer per window
_PER_PEER_WINDOW_S = 60.0
_DIAL_TRANSPORTS = {"tcp", "ws"}

Answer = Literal["reached", "failed", "refused"]


class DialBackServer:
    """Answers peers' requests to be dialed back."""

    def __init__(self, raw: IHost) -> None:
        self._raw = raw
        self._dialing = 0
        self._served: dict[ID, deque[float]] = {}

    async def handle(self, stream: INetStream) -> None:
        try:
            with trio.fail_after(ASK_TIMEOUT_S):
                request = Message()
                request.ParseFromString(await read_varint_prefixed_bytes_limited(stream, _MAX_MESSAGE))
                response = await self._answer(stream, request)
                await stream.write(encode_varint_prefixed(response.SerializeToString()))
            await stream.close()
        except Exception as exc:  # a peer's bad bytes or dropped stream: its own loss only
            logger.debug("AutoNAT request from %s dropped: %r", stream.muxed_conn.peer_id, exc)
            await stream.reset()

    async def _answer(self, stream: INetStream, request: Message) -> Message:
        asker = stream.muxed_conn.peer_id
        if request.type != Message.DIAL or not request.HasField("dial"):
            return _response(Message.E_BAD_REQUEST, "not a DIAL request")
        if request.dial.peer.id and request.dial.peer.id != asker.to_bytes():
            return _response(Message.E_BAD_REQUEST, "a peer may only ask to be dialed back itself")
        came_from = _direct_remote_ip(stream)
        if came_from is None:
            return _response(Message.E_DIAL_REFUSED, "no dial-back over a relayed connection")
        addrs = [a for a in _parse_all(request.dial.peer.addrs) if _dialable_at(a, came_from)][:_MAX_ADDRS]
        if not addrs:
            return _response(
                Message.E_DIAL_REFUSED, f"no address at {came_from}, where this request came from"
            )
        if not self._admit(asker):
            return _response(Message.E_DIAL_REFUSED, "too many dial-back requests; try later")
        try:
            reached = await self._first_reached(asker, addrs)
        finally:
            self._dialing -= 1
        if reached is None:
            return _response(Message.E_DIAL_ERROR, "no fresh connection reached you")
        response = _response(Message.OK, "")
        response.dialResponse.addr = reached.to_bytes()
        return response

    def _admit(self, asker: ID) -> bool:
        now = time.monotonic()
        served = self._served.setdefault(asker, deque())
        while served and now - served[0] > _PER_PEER_WINDOW_S:
            served.popleft()
        if self._dialing >= _MAX_DIALING or len(served) >= _PER_PEER:
            return False
        for idle in [p for p, times in self._served.items() if not times]:
            del self._served[idle]
        served.append(now)
        self._served[asker] = served
        self._dialing += 1
        return True

    async def _first_reached(self, peer: ID, addrs: list[multiaddr.Multiaddr]) -> multiaddr.Multiaddr | None:
        reached: list[multiaddr.Multiaddr] = []
        async with trio.open_nursery() as nursery:

            async def dial(addr: multiaddr.Multiaddr) -> None:
                if await dial_fresh(self._raw, peer, addr):
                    reached.append(addr)
                    nursery.cancel_scope.cancel()

            for addr in addrs:
                nursery.start_soon(dial, addr)
        return reached[0] if reached else None


async def dial_fresh(raw: IHost, peer: ID, addr: multiaddr.Multiaddr) -> bool:
    """Whether a new connection to `addr` completes the Noise handshake as `peer`.

    Nothing of the host's own connections is used or touched: the swarm would hand
    back an existing connection, and would keep a new one (closing an older one).
    """
    network = raw.get_network()
    if not isinstance(network, Swarm):
        return False
    transport = network.transport_manager.transport_for_dialing(addr)
    if transport is None:
        return False
    with trio.move_on_after(DIAL_BACK_TIMEOUT_S):
        try:
            conn = await transport.dial(addr)
        except Exception as exc:  # transports raise assorted types when nothing answers
            logger.debug("dial-back to %s at %s failed: %r", peer, addr, exc)
            return False
        try:
            if network.psk is not None:  # a private swarm's key guards this connection too
                conn = new_protected_conn(conn, network.psk)
            secured = await network.upgrader.upgrade_security(conn, True, peer)
            await secured.close()
            return True
        except Exception as exc:  # a handshake failure: someone else, or no dinet, there
            logger.debug("dial-back to %s at %s: no handshake: %r", peer, addr, exc)
            return False
        finally:
            await conn.close()
    logger.debug("dial-back to %s at %s: no answer in %g s", peer, addr, DIAL_BACK_TIMEOUT_S)
    return False


async def ask_dial_back(raw: IHost, server: ID, addr: str) -> Answer:
    """Ask `server` to dial us back at `addr` (one address, so its answer is about that one)."""
    request = Message(type=Message.DIAL)
    request.dial.peer.id = raw.get_id().to_bytes()
    request.dial.peer.addrs.append(multiaddr.Multiaddr(addr).to_bytes())
    _QUIET.expect_from(server)
    try:
        with trio.fail_after(ASK_TIMEOUT_S):
            stream = await raw.new_stream(server, [AUTONAT_PROTOCOL_ID])
            try:
                await stream.write(encode_varint_prefixed(request.SerializeToString()))
                response = Message()
                response.ParseFromString(await read_varint_prefixed_bytes_limited(stream, _MAX_MESSAGE))
            finally:
                await stream.close()
    except Exception as exc:  # no such protocol there, a dropped stream, bad bytes, too slow
        logger.debug("%s did not answer an AutoNAT request: %r", server, exc)
        return "refused"
    status = response.dialResponse.status
    if response.type == Message.DIAL_RESPONSE and status == Message.OK:
        return "reached"
    if response.type == Message.DIAL_RESPONSE and status == Message.E_DIAL_ERROR:
        return "failed"
    logger.debug("%s declined to dial back %s: %s", server, addr, response.dialResponse.statusText)
    return "refused"


def _response(status: Message.ResponseStatus.ValueType, text: str) -> Message:
    response = Message(type=Message.DIAL_RESPONSE)
    response.dialResponse.status = status
    response.dialResponse.statusText = text
    return response


def _direct_remote_ip(stream: INetStream) -> str | None:
    """The IP a request came from; None over a relay (or when unknown): the relay's is no proof."""
    try:
        if stream.muxed_conn.get_connection_type() != ConnectionType.DIRECT:
            return None
        remote = stream.get_remote_address()
    except Exception:  # a transport that cannot say: treated as relayed
        return None
    return _normal_ip(remote[0]) if remote else None


def _parse_all(raw_addrs: Iterable[bytes]) -> list[multiaddr.Multiaddr]:
    parsed = []
    for raw in raw_addrs:
        try:
            parsed.append(multiaddr.Multiaddr(raw))
        except Exception:  # the multiaddr package raises several unrelated types
            continue
    return parsed


def _dialable_at(addr: multiaddr.Multiaddr, ip: str) -> bool:
    """A concrete /ip4|ip6/IP/tcp/PORT[/ws][/p2p/…] address at exactly `ip`."""
    protocols = [p.name for p in addr.protocols()]
    if len(protocols) < 2 or protocols[0] not in ("ip4", "ip6") or protocols[1] != "tcp":
        return False
    if not set(protocols[2:]) <= _DIAL_TRANSPORTS | {"p2p"}:
        return False
    at = _normal_ip(addr.value_for_protocol(protocols[0]))
    return at == ip and not ipaddress.ip_address(at).is_unspecified and addr.value_for_protocol("tcp") != "0"


def _normal_ip(text: str) -> str:
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


_MUX_FAILED = "fail to upgrade mux for peer %s"


class _QuietDialBacks(logging.Filter):
    """A dial-back closes once the Noise handshake has proven who we are; py-libp2p logs the
    muxer negotiation that never follows as an error. From a peer we asked, it is expected."""

    def __init__(self) -> None:
        super().__init__()
        self._until: dict[str, float] = {}

    def expect_from(self, server: ID) -> None:
        now = time.monotonic()
        for gone in [peer for peer, until in self._until.items() if until < now]:
            del self._until[gone]
        self._until[str(server)] = now + 2 * ASK_TIMEOUT_S

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != _MUX_FAILED or not isinstance(record.args, tuple) or not record.args:
            return True
        expected = self._until.get(str(record.args[0]), 0.0) > time.monotonic()
        if expected:
            logger.debug("dial-back from %s closed after the handshake, as it should", record.args[0])
        return not expected


_QUIET = _QuietDialBacks()
logging.getLogger("libp2p.network.swarm").addFilter(_QUIET)
