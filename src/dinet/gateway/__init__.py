"""The OpenAI-compatible HTTP gateway and the web page: `din gateway`, `din node --api-port`."""

from dinet.gateway._app import build_app
from dinet.gateway._peers import BrowserEntry
from dinet.gateway._server import GatewayStarted, serve_gateway

__all__ = ["BrowserEntry", "GatewayStarted", "build_app", "serve_gateway"]
