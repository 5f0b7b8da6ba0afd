"""Who may connect to a host: the members of a private swarm (pnet), and of an allowlist.

Both are enforced where every connection passes, whatever its transport (TCP, WebSocket,
a relay circuit, a hole punch) and its direction: the upgrader that secures a raw
connection. The swarm key wraps the raw connection before the security handshake
(`dinet.p2p.pnet`); the allowlist is checked before an outbound handshake starts, and on
an inbound one as soon as Noise has proved the remote peer id, so a refused peer never
reaches the stream multiplexer, let alone a dinet protocol. A transport that secures
itself (QUIC) would bypass the upgrader: a gated host refuses to run one.

Every host, gated or not, checks that a connection's first bytes are libp2p's: a host
without the key that dials a private swarm is told so at once, instead of timing out.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio
from libp2p.abc import IHost, IMuxedConn, IRawConnection, ISecureConn
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.transport.exceptions import MuxerUpgradeFailure, SecurityUpgradeFailure
from libp2p.transport.upgrader import TransportUpgrader

from dinet.errors import ConfigError
from dinet.p2p.allowlist import Allowlist
from dinet.p2p.pnet import GuardedConnection, SwarmKey, read_swarm_key
from dinet.wire.ids import PeerId

logger = logging.getLogger(__name__)

# libp2p's safeguard (pnet spec): with this set to 1, a host without a swarm key must not run.
FORCE_PNET_ENV = "LIBP2P_FORCE_PNET"
POLICE_EVERY_S = 1.0  # how soon a peer removed from the allowlist loses its open connections


class Refused(SecurityUpgradeFailure):
    """A connection the gate turned away (py-libp2p handles it as a failed handshake)."""


class TurnedAway(MuxerUpgradeFailure):
    """The other side hung up right after the security handshake: what its gate does to
    a peer it does not admit (an allowlist)."""


@dataclass(frozen=True)
class PeerGate:
    """A host's admission rules: a swarm key, an allowlist, both or neither."""

    swarm_key: SwarmKey | None = None
    allowlist: Allowlist | None = None

    def refusal(self, peer_id: PeerId) -> str | None:
        """Why `peer_id` may not connect, or None if it may."""
        if self.allowlist is not None and not self.allowlist.allows(peer_id):
            return f"{peer_id} is not on the allowlist {self.allowlist.path}"
        return None


def peer_gate(swarm_key: Path | None = None, allow_peers: Path | None = None) -> PeerGate:
    """The gate the settings `swarm_key` and `allow_peers` describe; ConfigError for a bad file."""
    gate = PeerGate(
        read_swarm_key(swarm_key) if swarm_key is not None else None,
        Allowlist(allow_peers) if allow_peers is not None else None,
    )
    if gate.swarm_key is not None:
        logger.info("private swarm: only holders of swarm key %s are spoken to", gate.swarm_key.fingerprint)
    if gate.allowlist is not None:
        logger.info("allowlist %s: %d peers may connect", allow_peers, len(gate.allowlist.peers))
    return gate


def install_gate(raw: IHost, gate: PeerGate) -> None:
    """Make every connection of `raw` pass `gate` (call before the host runs)."""
    if gate.swarm_key is None and os.environ.get(FORCE_PNET_ENV) == "1":
        raise ConfigError(f"{FORCE_PNET_ENV}=1 forbids running outside a private swarm: give --swarm-key")
    network = raw.get_network()
    if not isinstance(network, Swarm):
        raise TypeError(f"cannot gate a {type(network).__name__}")
    gated = gate.swarm_key is not None or gate.allowlist is not None
    for transport in network.transport_manager.get_transports():
        if gated and "quic" in type(transport).__name__.lower():
            raise ConfigError("QUIC secures itself, past the swarm key and allowlist: not in a private swarm")
    network.upgrader = _GatedUpgrader(network.upgrader, gate)


class _GatedUpgrader(TransportUpgrader):
    """py-libp2p's upgrader, with the gate around its security step."""

    def __init__(self, inner: TransportUpgrader, gate: PeerGate) -> None:
        # The same negotiators as the library built: only upgrade_security changes.
        self.security_multistream = inner.security_multistream
        self.muxer_multistream = inner.muxer_multistream
        self._gate = gate

    async def upgrade_security(
        self, raw_conn: IRawConnection, is_initiator: bool, peer_id: ID | None = None
    ) -> ISecureConn:
        if is_initiator and peer_id is not None:  # refused before a single byte goes out
            self._check(PeerId(peer_id.to_base58()))
        guarded = GuardedConnection(raw_conn, self._gate.swarm_key)
        try:
            secured = await super().upgrade_security(guarded, is_initiator, peer_id)
        except Exception:  # a stranger's bytes surface as assorted negotiation errors
            if guarded.stranger is None:
                raise
            logger.debug("refused a connection: %s", guarded.stranger)
            raise Refused(guarded.stranger) from None
        try:
            self._check(PeerId(secured.get_remote_peer().to_base58()))
        except Refused:
            await secured.close()
            raise
        return secured

    async def upgrade_connection(self, conn: ISecureConn, peer_id: ID) -> IMuxedConn:
        try:
            return await super().upgrade_connection(conn, peer_id)
        except MuxerUpgradeFailure as exc:
            raise TurnedAway(
                f"{peer_id} hung up after the security handshake; it may admit only "
                f"the peers on its allowlist, and this one is {conn.get_local_peer()} ({exc})"
            ) from exc

    def _check(self, peer_id: PeerId) -> None:
        reason = self._gate.refusal(peer_id)
        if reason is not None:
            logger.info("refused a connection: %s", reason)
            raise Refused(reason)


@asynccontextmanager
async def policing(raw: IHost, gate: PeerGate | None) -> AsyncIterator[None]:
    """While inside: peers taken off the allowlist lose the connections they already had."""
    if gate is None or gate.allowlist is None:
        yield
        return
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_police, raw, gate.allowlist)
        yield
        nursery.cancel_scope.cancel()


async def _police(raw: IHost, allowlist: Allowlist) -> None:
    while True:
        await trio.sleep(POLICE_EVERY_S)
        allowed = allowlist.peers  # reloads the file if it changed
        for peer in list(raw.get_connected_peers()):
            if peer.to_base58() not in allowed:
                logger.info("%s was taken off the allowlist: disconnecting it", peer.to_base58())
                await raw.disconnect(peer)


def refusal_in(exc: BaseException) -> str | None:
    """The gate's reason, if the gate is why a dial failed (py-libp2p wraps it deep down)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, Refused | TurnedAway):
            return str(e)
        # py-libp2p's MultiError keeps its parts in `errors`; an ExceptionGroup in `exceptions`.
        todo += [e.__cause__, e.__context__, *getattr(e, "errors", ()), *getattr(e, "exceptions", ())]
    return None
