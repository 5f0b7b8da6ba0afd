"""Running a gateway: a libp2p client and an HTTP server in one trio nursery."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from dinet.client.network import open_network
from dinet.config import GatewaySettings
from dinet.gateway._app import build_app
from dinet.gateway._peers import BrowserEntry, NetworkView
from dinet.p2p.host import Reachability
from dinet.wire.ids import PeerId

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayStarted:
    url: str  # e.g. http://127.0.0.1:8000
    peer_id: PeerId  # the gateway's own libp2p identity (a client, not a serving peer)


async def serve_gateway(
    settings: GatewaySettings,
    *,
    node_reachability: Callable[[], Reachability] | None = None,
    node_browser: Callable[[], BrowserEntry] | None = None,
    task_status: trio.TaskStatus[GatewayStarted] = trio.TASK_STATUS_IGNORED,  # type: ignore[name-defined]
) -> None:
    """Serve the OpenAI-compatible API and the web page until cancelled.

    Reports GatewayStarted once the HTTP server listens. Beside a node, `node_reachability`
    gives the node's reachability, for the metrics and the page, and `node_browser` where
    browser tabs dial it (GET /api/browser).
    """
    async with open_network(settings) as network:
        view = NetworkView(
            network, settings.bootstrap, settings.discover_timeout_s, node_reachability, node_browser
        )
        await _serve_on(view, settings, task_status)


async def _serve_on(
    view: NetworkView,
    settings: GatewaySettings,
    task_status: trio.TaskStatus[GatewayStarted],  # type: ignore[name-defined]
) -> None:
    await view.refresh()
    app = build_app(view, settings)
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(view.keep_fresh, settings.refresh_s)
        binds: list[str] = await nursery.start(serve, app, config)
        url = binds[0]
        logger.info("gateway listening on %s", url)
        task_status.started(GatewayStarted(url, view.peer_id))
