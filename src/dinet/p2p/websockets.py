"""WebSocket listeners (`/ws`, `/wss`): where browser tabs dial a node.

A browser can open no TCP connection, only WebSockets, so a node that browser tabs join
through listens on `/ws` (a page served over plain http, or a tab on the same machine)
or `/wss` (TLS, from a certificate file: what a page served over https may dial). Noise
and yamux run inside the WebSocket as over TCP.

py-libp2p 0.8.1 has the transport but gives all its WebSocket listeners one TLS
setting: with a certificate, a `/ws` listener would speak TLS too. `_WebSockets` uses the
certificate on `/wss` listeners only, so a node can listen on both at once.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import multiaddr
from libp2p.abc import IHost, IListener
from libp2p.custom_types import THandler
from libp2p.transport.websocket.listener import WebsocketListener
from libp2p.transport.websocket.transport import WebsocketTransport

from dinet.errors import ConfigError


@dataclass(frozen=True)
class WebSocketTls:
    """The certificate (PEM, with its chain) and private key (PEM) a `/wss` listener shows."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot use {self.cert} with {self.key} for /wss: {exc}") from None
        return context


def is_websocket(addr: str) -> bool:
    """Whether `addr` is a WebSocket address (`…/tcp/<port>/ws` or `…/wss`, maybe with /p2p/…)."""
    parts = addr.split("/")
    return "ws" in parts or "wss" in parts


def add_websockets(raw: IHost, listen: Sequence[str], tls: WebSocketTls | None) -> None:
    """Give `raw` (not running yet) the WebSocket transport when `listen` has a WebSocket
    address; ConfigError for a `/wss` one without `tls`, or a certificate that does not load."""
    wanted = [a for a in listen if is_websocket(a)]
    if not wanted:
        return
    if tls is None and any("wss" in a.split("/") for a in wanted):
        raise ConfigError("listening on /wss needs a certificate and its key (--ws-cert, --ws-key)")
    swarm = raw.get_network()
    context = tls.server_context() if tls is not None else None
    swarm.transport_manager.add_transport(_WebSockets(swarm.upgrader, tls_server_config=context))  # type: ignore[attr-defined]


class _OneSchemeListener(WebsocketListener):
    """A WebSocket listener that speaks TLS exactly on a `/wss` address."""

    async def listen(self, maddr: multiaddr.Multiaddr) -> None:
        if "wss" not in {p.name for p in maddr.protocols()}:
            self._tls_config = None  # the transport's certificate is for /wss listeners only
        await super().listen(maddr)


class _WebSockets(WebsocketTransport):
    def create_listener(self, handler: THandler) -> IListener:  # type: ignore[override]
        listener = super().create_listener(handler)
        listener.__class__ = _OneSchemeListener  # built by the library; only `listen` differs
        return listener
