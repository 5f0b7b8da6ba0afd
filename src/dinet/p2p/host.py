"""The host every dinet process runs (TCP, Noise only, yamux only), behind a small facade.

Nothing above p2p/ sees py-libp2p: `PeerHost` speaks in peer ids and multiaddr
strings, serves protocols with `Stream`s, and carries the DHT and gossip when the
host runs them, and its reach: relayed connections, hole punching, reservations
(`dinet.p2p.reach`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Literal

import multiaddr
import trio
from libp2p import create_yamux_muxer_option, new_host
from libp2p.abc import IHost, INetConn, INetStream, ISubscriptionAPI, PeerInfo
from libp2p.connection_types import ConnectionType
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.network.config import ConnectionConfig
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from dinet.errors import ConfigError, ModelVersionsError, PeerError, PeerUnreachable
from dinet.overlay.connections import Link, links_to_close
from dinet.p2p._dht import (
    dht_key,
    find_model_providers,
    get_versions,
    model_id_key,
    put_versions,
    running_dht,
)
from dinet.p2p._dialing import bare, dial_first, dial_plan, is_circuit
from dinet.p2p._yamux import keep_frames_whole
from dinet.p2p.addresses import AddressBook
from dinet.p2p.autonat import PROTOCOL as AUTONAT_PROTOCOL
from dinet.p2p.autonat import DialBackServer
from dinet.p2p.gate import PeerGate, install_gate, policing
from dinet.p2p.gossip import running_pubsub
from dinet.p2p.identity import libp2p_key_pair
from dinet.p2p.reach import Reach, ReachConfig, running_reach
from dinet.p2p.reachability import Reachability, ReachState
from dinet.p2p.streams import Handler, Stream
from dinet.p2p.websockets import WebSocketTls, add_websockets, is_websocket
from dinet.wire.ids import ModelHash, PeerId
from dinet.wire.keys import SigningKey
from dinet.wire.versions import SignedModelVersions, verify_versions, versions_key

logger = logging.getLogger(__name__)

DIAL_TIMEOUT_S = 5.0
# py-libp2p keeps a slot per inbound connection for the host's whole life and
# refuses new ones past max_connections: set it far beyond any real lifetime.
_MAX_CONNECTIONS = 1_000_000
_ADDR_TTL_S = 600

DHTRole = Literal["server", "client"]
LinkKind = Literal["direct", "relayed"]


@dataclass(frozen=True)
class FoundPeer:
    """A peer some discovery named, with the addresses it gave (each ending in /p2p/<peer id>)."""

    peer_id: PeerId
    addrs: tuple[str, ...]


@dataclass
class _Dial:
    """A dial to one peer in progress: the addresses it tries, and how it ended."""

    plan: list[str]
    done: trio.Event = field(default_factory=trio.Event)
    failure: PeerUnreachable | None = None


class Subscription:
    """The messages of one gossip topic, as they arrive."""

    def __init__(self, raw: ISubscriptionAPI) -> None:
        self._raw = raw

    async def get(self) -> bytes:
        return (await self._raw.get()).data


class PeerHost:
    """What dinet does with a libp2p host: its identity, protocols, dials, addresses,
    DHT provider records and gossip."""

    def __init__(self, raw: IHost, key: SigningKey, gate: PeerGate | None = None) -> None:
        self._raw = raw
        self.key = key  # signs manifests, receipts and countersignatures
        self._gate = gate  # who may connect (build_host installed it on `raw`)
        self.peer_id = PeerId(raw.get_id().to_base58())
        self._dht: KadDHT | None = None
        self._pubsub: Pubsub | None = None
        self._reach: Reach | None = None
        self._verdict_changed = trio.Event()
        # What peers' dial-backs say (AutoNAT), unless set_reachability overrides it.
        self._addresses = AddressBook(raw, self.peer_id, on_change=self._reachability_moved)
        self._assumed: Reachability | None = None
        raw.set_stream_handler(TProtocol(AUTONAT_PROTOCOL), DialBackServer(raw).handle)
        self._rtt_ms: dict[PeerId, float] = {}
        self._rtt_listeners: list[Callable[[PeerId, float], None]] = []
        # py-libp2p 0.8.1's get_addrs() strips every /p2p/ part of an advertised address and
        # appends ours, which turns a circuit address into the relay's own address. Identify,
        # DHT provider records, relay reservations and DCUtR all read it: one replacement here
        # makes them all advertise what `advertised_addrs` says.
        raw.get_addrs = self._libp2p_addrs  # type: ignore[method-assign]
        raw.get_network().dial_peer = self._libp2p_dial_peer  # type: ignore[method-assign,assignment]
        self._dialing: dict[PeerId, _Dial] = {}
        # When each connected peer was first seen connected, and last carried a dinet stream:
        # the connection set is trimmed by them (`keep_bounded`).
        self._opened_at: dict[PeerId, float] = {}
        self._used_at: dict[PeerId, float] = {}

    @property
    def raw(self) -> IHost:
        """The libp2p host, for the rest of p2p/ only."""
        return self._raw

    # --- lifetime ---

    @asynccontextmanager
    async def running(
        self,
        listen: Sequence[str],
        *,
        dht: DHTRole | None = None,
        gossip: bool = False,
        reach: ReachConfig | None = None,
        check_reach: bool = False,
        announce: Sequence[str] = (),
        upnp: bool = False,
        ws_tls: WebSocketTls | None = None,
    ) -> AsyncIterator[PeerHost]:
        """Listen on `listen`, with a DHT (a server answers others' lookups) and gossip if
        asked, and reach as `reach` says (default: hole punching, no relaying, no reservations).

        `check_reach`: find out by AutoNAT which addresses peers reach (see `reachability`),
        with the router's forwarded ports if `upnp`; `announce`: addresses the operator knows.
        `listen` may hold WebSocket addresses (`/ws`, and `/wss` with `ws_tls`), for browsers.
        """
        self._addresses.announce(announce)
        add_websockets(self._raw, listen, ws_tls)
        async with self._raw.run(parse_multiaddrs(listen)), AsyncExitStack() as services:
            await services.enter_async_context(policing(self._raw, self._gate))
            if check_reach:
                checks = await services.enter_async_context(trio.open_nursery())
                services.callback(checks.cancel_scope.cancel)
                await checks.start(self._addresses.keep_checked, upnp)
            if gossip:
                self._pubsub = await services.enter_async_context(running_pubsub(self._raw))
            if dht is not None:
                self._dht = await services.enter_async_context(running_dht(self._raw, server=dht == "server"))
            self._reach = await services.enter_async_context(running_reach(self, reach or ReachConfig()))
            try:
                yield self
            finally:
                self._dht = self._pubsub = self._reach = None

    # --- protocols and streams ---

    def set_handler(self, protocol: str, handler: Handler) -> None:
        """Serve `protocol`: each inbound stream goes to `handler`.

        A handler's failure costs its own stream only: py-libp2p would close the peer's
        whole connection, or stop the host when it escapes the swarm's task.
        """

        async def serve(raw: INetStream) -> None:
            stream = Stream(raw)
            self._used_at[stream.remote_peer] = trio.current_time()
            try:
                await handler(stream)
            except Exception:  # logged in full: a bug here must not reach every other stream
                logger.exception("the %s handler failed; its stream is reset", protocol)
                await stream.reset()

        self._raw.set_stream_handler(TProtocol(protocol), serve)

    async def open_stream(self, peer_id: PeerId, protocol: str, timeout: float) -> Stream:
        """A new stream to `peer_id` for `protocol` (over a direct connection when there is
        one; dialed first if there is none, circuits too); PeerUnreachable if it does not
        open in time."""
        deadline = trio.current_time() + timeout
        try:
            if not self.is_connected(peer_id):  # a relayed connection that dropped is dialed again here
                await self.connect(peer_id, (), timeout)  # by its own deadline: its error says what failed
            with trio.fail_at(deadline):
                raw = await self._raw.new_stream(ID.from_base58(peer_id), [TProtocol(protocol)])
        except trio.TooSlowError:
            raise PeerUnreachable(f"{peer_id} did not open a {protocol} stream in {timeout:g} s") from None
        except PeerUnreachable:
            raise
        except Exception as exc:  # libp2p raises assorted types when a stream cannot open
            raise PeerUnreachable(f"cannot open a {protocol} stream to {peer_id}: {exc}") from None
        self._used_at[peer_id] = trio.current_time()
        return Stream(raw)

    # --- connections ---

    async def dial(self, addr: str, timeout: float = DIAL_TIMEOUT_S) -> PeerId:
        """Connect to the peer at `addr` (…/p2p/<peer id>); its peer id, or PeerUnreachable."""
        peer_id = peer_of(addr)
        await self.connect(peer_id, [addr], timeout)
        return peer_id

    async def connect(
        self, peer_id: PeerId, addrs: Sequence[str] = (), timeout: float = DIAL_TIMEOUT_S
    ) -> None:
        """Connect to `peer_id` (unless connected) at `addrs` and at those libp2p already
        holds: direct addresses first, `/p2p-circuit` ones after a head start (see
        `dinet.p2p._dialing`); PeerUnreachable."""
        if self.is_connected(peer_id):
            return
        if self._gate is not None and (refused := self._gate.refusal(peer_id)) is not None:
            raise PeerUnreachable(f"not dialing: {refused}")
        try:
            target = ID.from_base58(peer_id)
        except ValueError as exc:
            raise PeerUnreachable(f"cannot dial {peer_id!r}: {exc}") from None
        problems: list[str] = []  # the failed attempts of this dial, as they come
        try:
            with trio.fail_after(timeout):
                # One dial to a peer at a time. Those that waited share its failure, unless
                # they bring addresses it did not try; then the first of them dials next.
                while (other := self._dialing.get(peer_id)) is not None:
                    await other.done.wait()
                    if self.is_connected(peer_id):
                        return
                    plan = dial_plan(peer_id, [*addrs, *self.known_addrs(peer_id)], self.peer_id)
                    if other.failure is not None and set(plan) <= set(other.plan):
                        raise PeerUnreachable(str(other.failure))
                plan = dial_plan(peer_id, [*addrs, *self.known_addrs(peer_id)], self.peer_id)
                if not plan:
                    raise PeerUnreachable(f"no address known for {peer_id}")
                self._dialing[peer_id] = dial = _Dial(plan)
                try:
                    await dial_first(self, peer_id, plan, problems)
                except PeerUnreachable as exc:
                    dial.failure = exc
                    raise
                finally:
                    del self._dialing[peer_id]
                    dial.done.set()
                    # A dial that reached another peer makes libp2p forget every address of this one.
                    self._raw.get_peerstore().add_addrs(target, _parsed(plan), _ADDR_TTL_S)
        except trio.TooSlowError:
            # What failed meanwhile tells more than the silence of the rest (a refusal, say).
            failed = f"; meanwhile {'; '.join(problems)}" if problems else ""
            raise PeerUnreachable(f"no answer from {peer_id} within {timeout:g} s{failed}") from None
        self._forgive_failed_dials(target)

    async def _libp2p_dial_peer(self, peer: ID) -> list[INetConn]:
        """The swarm's own dials (DHT queries, gossip, a stream to a peer not connected)
        go through `connect` too: py-libp2p 0.8.1's dial_peer tries one address of each
        kind, never a circuit, and waits out a LAN address of another home (~20 s)."""
        try:
            await self.connect(PeerId(peer.to_base58()), (), DIAL_TIMEOUT_S)
        except PeerUnreachable as exc:
            raise SwarmException(str(exc)) from None
        return list(self._raw.get_network().get_connections(peer))

    async def disconnect(self, peer_id: PeerId) -> None:
        await self._raw.disconnect(ID.from_base58(peer_id))

    async def reach(
        self, peer_id: PeerId, addrs: Sequence[str] = (), timeout: float = DIAL_TIMEOUT_S
    ) -> bool:
        """Whether `peer_id` is connected now: already, or by a dial (see `connect`) to
        `addrs` and wherever libp2p knows it to be."""
        try:
            await self.connect(peer_id, addrs, timeout)
        except PeerUnreachable as exc:
            logger.debug("%s unreachable: %s", peer_id, exc)
            return False
        return True

    def connected_peers(self) -> set[PeerId]:
        return {PeerId(peer.to_base58()) for peer in self._raw.get_connected_peers()}

    def is_connected(self, peer_id: PeerId) -> bool:
        return peer_id in self.connected_peers()

    def link_kind(self, peer_id: PeerId) -> LinkKind | None:
        """How this host is connected to `peer_id`: "direct", "relayed" (only through a
        relay), or None (not connected)."""
        conns = self._connections(peer_id)
        if not conns:
            return None
        return "direct" if any(not _relayed(c) for c in conns) else "relayed"

    def behind_relay(self, peer_id: PeerId) -> bool:
        """Whether bytes to `peer_id` go through a relay: it is connected only through one,
        or not connected and known only at `/p2p-circuit` addresses (a relay that cut its
        circuit leaves no connection, yet a dial would take the relay again)."""
        kind = self.link_kind(peer_id)
        if kind is not None:
            return kind == "relayed"
        addrs = self.known_addrs(peer_id)
        return bool(addrs) and all(is_circuit(a) for a in addrs)

    def remote_addrs(self, peer_id: PeerId) -> list[str]:
        """The addresses this host's direct connections to `peer_id` run to (bare)."""
        out: list[str] = []
        for conn in self._connections(peer_id):
            if not _relayed(conn):
                out += [bare(str(a)) for a in conn.get_transport_addresses()]
        return list(dict.fromkeys(out))

    def reserved_here(self) -> set[PeerId]:
        """The connected peers holding a relay reservation on this host (browser tabs, nodes
        behind NAT): others reach them only through it."""
        return self._reach.relay.reserved_peers() if self._reach is not None else set()

    def links(self, kept: Collection[PeerId]) -> list[Link]:
        """The connected peers as the connection set sees them (`kept`: the peers the node
        needs; the relays holding a reservation for this host, and the peers holding one
        here, are always needed: closing the link would void the reservation)."""
        now = trio.current_time()
        relays = set(self.reachability().relays)
        relays |= self.reserved_here()
        connected = self.connected_peers()
        for gone in set(self._opened_at) - connected:
            del self._opened_at[gone]
            self._used_at.pop(gone, None)
        links = []
        for peer_id in connected:
            opened = self._opened_at.setdefault(peer_id, now)
            busy = any(
                str(stream.get_protocol() or "").startswith("/dinet/")
                for conn in self._connections(peer_id)
                for stream in conn.get_streams()
            )
            needed = peer_id in relays or peer_id in kept
            used = self._used_at.get(peer_id, opened)
            links.append(Link(peer_id, opened, used, busy, needed, len(self._connections(peer_id))))
        return links

    async def keep_bounded(
        self, bound: int, kept: Callable[[], Collection[PeerId]], every_s: float = 2.0
    ) -> None:
        """Close the least recently used idle connections whenever more than `bound` are
        open (forever); `kept()` names the peers the node needs now. See
        `dinet.overlay.connections`."""
        while True:
            await self._close_idle_duplicates()
            for peer_id in links_to_close(self.links(kept()), bound, trio.current_time()):
                logger.debug("closing the idle connection to %s (over %d connections)", peer_id, bound)
                try:
                    await self.disconnect(PeerId(peer_id))
                except Exception as exc:  # it may have closed meanwhile
                    logger.debug("closing %s: %s", peer_id, exc)
            await trio.sleep(every_s)

    async def _close_idle_duplicates(self) -> None:
        """Two peers dialing each other at once may both succeed and keep two connections:
        close the extra ones that carry no stream (a direct one is kept before a relayed one)."""
        for peer_id in self.connected_peers():
            conns = self._connections(peer_id)
            if len(conns) < 2:
                continue
            conns.sort(key=lambda c: (bool(c.get_streams()), not _relayed(c)), reverse=True)
            for extra in conns[1:]:
                if not extra.get_streams():
                    logger.debug("closing a second, idle connection to %s", peer_id)
                    try:
                        await extra.close()
                    except Exception as exc:  # it may have closed meanwhile
                        logger.debug("closing a connection to %s: %s", peer_id, exc)

    def _connections(self, peer_id: PeerId) -> list[INetConn]:
        try:
            return list(self._raw.get_network().get_connections(ID.from_base58(peer_id)))
        except ValueError:  # not a peer id
            return []

    def speaks(self, peer_id: PeerId, protocol: str) -> bool:
        """Whether identify says `peer_id` serves `protocol`."""
        try:
            return bool(self._raw.get_peerstore().supports_protocols(ID.from_base58(peer_id), [protocol]))
        except Exception:  # py-libp2p raises when the peer is unknown
            return False

    def note_rtt(self, peer_id: PeerId, rtt_ms: float) -> None:
        """A round trip measured to `peer_id` (relays are chosen by it; network
        coordinates are kept from it: see `on_rtt`)."""
        self._rtt_ms[peer_id] = rtt_ms
        for listener in self._rtt_listeners:
            listener(peer_id, rtt_ms)

    def on_rtt(self, listener: Callable[[PeerId, float], None]) -> None:
        """Have `listener` told every round trip measured from now on."""
        self._rtt_listeners.append(listener)

    def rtt_ms(self, peer_id: PeerId) -> float | None:
        return self._rtt_ms.get(peer_id)

    # --- reach ---

    def reachability(self) -> Reachability:
        """Whether peers can dial this host, why, and through which relays."""
        relays = tuple(self._reach.keeper.held) if self._reach is not None else ()
        return replace(self._assumed or self._addresses.reachability(), relays=relays)

    def set_reachability(self, state: ReachState, reason: str, addrs: Sequence[str] = ()) -> None:
        """Override what peers' dial-backs say (tests on loopback, where every dial-back
        succeeds): a public host relays for others, one that is not keeps reservations."""
        full = tuple(a if a.endswith(f"/p2p/{self.peer_id}") else f"{a}/p2p/{self.peer_id}" for a in addrs)
        verdict = Reachability(state, reason, full)
        if verdict != self._assumed:
            logger.info("reachability assumed: %s (%s)", state, reason)
            self._assumed = verdict
            self._reachability_moved()

    def _reachability_moved(self) -> None:
        self._verdict_changed.set()
        self._verdict_changed = trio.Event()

    async def reachability_changed(self) -> None:
        """Return when the verdict next changes."""
        await self._verdict_changed.wait()

    def reach_counters(self) -> dict[str, int]:
        """Hole punches attempted and succeeded, reservations held, circuits relayed for
        others and their bytes (all zero before the host runs)."""
        if self._reach is None:
            return {}
        return self._reach.counters()

    async def tell_peers_what_changed(self) -> None:
        """Push identify to every connected peer (our protocols or addresses changed)."""
        push = getattr(self._raw, "_push_identify_to_all_peers", None)  # py-libp2p 0.8.1
        if push is not None:
            try:
                await push()
            except Exception as exc:  # best effort: peers identify again when they reconnect
                logger.debug("identify push failed: %s", exc)

    # --- addresses ---

    def full_addrs(self) -> list[str]:
        """The addresses this host listens on, each ending in /p2p/<peer id>; a wildcard
        listen address is expanded to loopback and every interface."""
        return [f"{a}/p2p/{self.peer_id}" for a in self._addresses.listen_addrs()]

    def browser_addrs(self) -> list[str]:
        """The WebSocket addresses this host listens on (each ending in /p2p/<peer id>): where
        a browser tab dials it."""
        return [a for a in self.full_addrs() if is_websocket(a)]

    def advertised_addrs(self) -> list[str]:
        """Where peers should dial this host, each ending in /p2p/<peer id>: addresses
        peers dialed back and those announced (the listen addresses while that is unknown),
        then circuits through the relays holding a reservation for it; a host that is not
        public adds its LAN addresses last, for peers on its LAN and for hole punching.
        Manifests, identify and DHT provider records carry these."""
        me = f"/p2p/{self.peer_id}"
        assumed = list(self._assumed.addrs) if self._assumed is not None else []
        circuits = self._reach.keeper.circuit_addrs() if self._reach is not None else []
        ordered = [*assumed, *self._addresses.advertised(), *circuits]
        if self.reachability().state != "public":
            ordered += [a for a in self.full_addrs() if not a.startswith(("/ip4/127.", "/ip6/::1/"))]
        return [a for a in dict.fromkeys(ordered) if a.endswith(me)]

    def _libp2p_addrs(self) -> list[multiaddr.Multiaddr]:
        out = []
        for addr in self.advertised_addrs():
            try:
                out.append(multiaddr.Multiaddr(addr))
            except Exception:  # an announced address that is no multiaddr is not advertised
                logger.debug("not advertising %r: no multiaddr", addr)
        return out

    def known_addrs(self, peer_id: PeerId) -> list[str]:
        """The addresses libp2p holds for a peer (bare: without /p2p/<its id>); none if it
        has never heard of it."""
        try:
            return [bare(str(addr)) for addr in self._raw.get_peerstore().addrs(ID.from_base58(peer_id))]
        except Exception:  # py-libp2p raises when the peer is unknown
            return []

    def remember_addrs(self, peer_id: PeerId, addrs: Sequence[str]) -> None:
        """Tell libp2p where a peer is now, and forget that dials to it failed before.

        A restarted peer comes back on a new port; py-libp2p would otherwise keep
        dialing its old addresses and refuse to dial it at all for 60 s after a failure.
        """
        target = ID.from_base58(peer_id)
        peerstore = self._raw.get_peerstore()
        peerstore.clear_addrs(target)  # its old ports are dead: dialing them only wastes time
        peerstore.add_addrs(target, _parsed([bare(a) for a in addrs]), _ADDR_TTL_S)
        self._forgive_failed_dials(target)

    def _forgive_failed_dials(self, target: ID) -> None:
        """py-libp2p refuses to dial a peer for 60 s after every address failed once."""
        failed_dials = getattr(self._raw.get_network(), "_negative_peer_cache", None)
        if failed_dials is not None:
            failed_dials.evict(str(target))

    # --- DHT provider records (a host without a DHT finds nothing and announces nothing) ---

    async def provide(self, model_hash: ModelHash | None = None, *, model_id: str | None = None) -> bool:
        """Announce that this host serves `model_hash` (or any version of `model_id`):
        whether a peer took the record, or PeerError."""
        if self._dht is None:
            return False
        try:
            return bool(await self._dht.provide(_provider_key(model_hash, model_id)))
        except Exception as exc:  # the DHT raises assorted types when no peer answers
            raise PeerError(f"DHT provide failed: {exc}") from None

    async def find_providers(
        self, model_hash: ModelHash | None = None, *, model_id: str | None = None
    ) -> list[FoundPeer]:
        """Peers that announced `model_hash` (or `model_id`), each once; PeerError if the
        lookup fails."""
        if self._dht is None:
            return []
        try:
            providers = await find_model_providers(self._dht, _provider_key(model_hash, model_id))
        except Exception as exc:  # the DHT raises assorted types when nobody answers
            raise PeerError(f"DHT lookup failed: {exc}") from None
        return [found_peer(info) for info in providers]

    async def explore(self) -> None:
        """Look up this host's own id in the DHT: the peers met on the way fill its routing
        table, and they learn of it (Kademlia's join). Best effort."""
        if self._dht is None:
            return
        try:
            await self._dht.refresh_routing_table()
        except Exception as exc:  # the DHT raises assorted types when nobody answers
            logger.debug("DHT self-lookup failed: %s", exc)

    # --- DHT values: model-version records (dinet.wire.versions) ---

    async def put_versions(self, signed: SignedModelVersions) -> int:
        """Store a publisher's model-version record in the DHT: how many peers took it.
        ModelVersionsError if it is invalid or older than one this host holds; PeerError if
        the DHT fails."""
        if self._dht is None:
            return 0
        record = verify_versions(signed)
        try:
            return await put_versions(
                self._dht, versions_key(record.publisher, record.model_id), signed.model_dump_json().encode()
            )
        except ModelVersionsError:
            raise
        except Exception as exc:  # the DHT raises assorted types when no peer answers
            raise PeerError(f"DHT put failed: {exc}") from None

    async def get_versions(self, publisher: PeerId, model_id: str) -> SignedModelVersions | None:
        """The newest valid record `publisher` signed for `model_id` that the DHT holds, or
        None; PeerError if the lookup fails."""
        if self._dht is None:
            return None
        try:
            value = await get_versions(self._dht, versions_key(publisher, model_id))
        except Exception as exc:  # the DHT raises assorted types when nobody answers
            raise PeerError(f"DHT lookup failed: {exc}") from None
        return SignedModelVersions.model_validate_json(value) if value is not None else None

    async def add_to_routing_table(self, peer_id: PeerId) -> None:
        """A peer we know answers: DHT lookups may start from it."""
        if self._dht is not None:
            await self._dht.routing_table.add_peer(ID.from_base58(peer_id))

    def routing_table_size(self) -> int:
        return self._dht.get_routing_table_size() if self._dht is not None else 0

    # --- gossip ---

    async def publish(self, topic: str, data: bytes) -> None:
        """Low-rate announcements only: gossip drops bursts silently."""
        await self._gossip().publish(topic, data)

    async def subscribe(self, topic: str) -> Subscription:
        return Subscription(await self._gossip().subscribe(topic))

    def _gossip(self) -> Pubsub:
        if self._pubsub is None:
            raise RuntimeError("this host runs without gossip")
        return self._pubsub


def build_host(key: SigningKey, *, enable_mdns: bool = False, gate: PeerGate | None = None) -> PeerHost:
    """A host that only speaks Noise (the library's default also accepts plaintext), to the
    peers `gate` admits (a private swarm's key, an allowlist; every peer without one)."""
    # py-libp2p's yamux sends a WINDOW_UPDATE frame after every read unless this is off
    # (it reads the variable at each read; a user's own setting wins). Off, its own
    # hysteresis decides: on a chain's 2.4 KB messages one update per two reads (counted),
    # and a 3-stage chain's hop took 0.95 ms instead of 1.08 (medians of ~550 tokens,
    # alternated runs). Pulling a model over loopback ran at the same speed.
    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
    keep_frames_whole()  # else a cancelled send can break the whole connection (see _yamux)
    key_pair = libp2p_key_pair(key)
    security = {NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=new_x25519_key_pair().private_key)}
    config = ConnectionConfig(
        max_connections=_MAX_CONNECTIONS,
        high_watermark=_MAX_CONNECTIONS,
        low_watermark=0,
        min_connections=0,
        # connect() waits a fixed 250 ms for extra connections unless this is 1.
        max_connections_per_peer=1,
    )
    raw = new_host(
        key_pair=key_pair,
        sec_opt=security,
        muxer_opt=create_yamux_muxer_option(),
        connection_config=config,
        enable_mDNS=enable_mdns,
    )
    install_gate(raw, gate or PeerGate())
    # py-libp2p's auto-connector dials peers of its peerstore whenever the connections are
    # below the watermarks' midpoint, every 30 s and after each disconnect: every peer
    # ever heard of, and again each one `keep_bounded` has just closed. dinet chooses its
    # links itself (joining, model neighbours, the connection bound).
    raw.get_network().auto_connector.maybe_connect = _never_dial  # type: ignore[attr-defined]
    return PeerHost(raw, key, gate)


async def _never_dial() -> None:
    pass


@asynccontextmanager
async def open_host(
    key: SigningKey,
    listen: Sequence[str],
    *,
    mdns: bool = False,
    dht: DHTRole | None = None,
    gossip: bool = False,
    reach: ReachConfig | None = None,
    gate: PeerGate | None = None,
) -> AsyncIterator[PeerHost]:
    """A running host (see `PeerHost.running`)."""
    host = build_host(key, enable_mdns=mdns, gate=gate)
    async with host.running(listen, dht=dht, gossip=gossip, reach=reach):
        yield host


def parse_multiaddrs(addrs: Sequence[str]) -> list[multiaddr.Multiaddr]:
    parsed = []
    for text in addrs:
        try:
            parsed.append(multiaddr.Multiaddr(text))
        except Exception as exc:  # the multiaddr package raises several unrelated types
            raise ConfigError(f"not a multiaddr: {text!r} ({exc})") from None
    return parsed


def peer_of(addr: str) -> PeerId:
    """The peer id at the end of a peer multiaddr (…/p2p/<peer id>), or ConfigError."""
    try:
        return PeerId(info_from_p2p_addr(multiaddr.Multiaddr(addr)).peer_id.to_base58())
    except Exception as exc:  # the multiaddr parser raises assorted types
        raise ConfigError(f"not a peer multiaddr (…/p2p/<peer id>): {addr!r} ({exc})") from None


def found_peer(info: PeerInfo) -> FoundPeer:
    peer = PeerId(info.peer_id.to_base58())
    return FoundPeer(peer, tuple(f"{bare(str(a))}/p2p/{peer}" for a in info.addrs))


def _parsed(addrs: Sequence[str]) -> list[multiaddr.Multiaddr]:
    """The multiaddrs among `addrs` (a peer's own advert may carry anything)."""
    out = []
    for addr in addrs:
        try:
            out += parse_multiaddrs([addr])
        except ConfigError:
            logger.debug("%r is no multiaddr: ignored", addr)
    return out


def _provider_key(model_hash: ModelHash | None, model_id: str | None) -> str:
    if model_hash is not None:
        return dht_key(model_hash)
    if model_id is not None:
        return model_id_key(model_id)
    raise ValueError("a provider record names a model hash or a model id")


def _relayed(conn: INetConn) -> bool:
    if conn.get_connection_type() == ConnectionType.RELAYED:
        return True
    return any(is_circuit(str(a)) for a in conn.get_transport_addresses())
