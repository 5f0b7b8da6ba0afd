"""Cross-origin isolation for the page, so a contributing tab can run llama.cpp on threads.

WebAssembly threads need SharedArrayBuffer, which browsers give only to a page that is
cross-origin isolated: the document is served with `Cross-Origin-Opener-Policy:
same-origin` and `Cross-Origin-Embedder-Policy: require-corp`, and every resource it
loads is same-origin or says it may be embedded (`Cross-Origin-Resource-Policy`). The page
loads only from its gateway, so every response carries all three headers; API clients
outside a browser ignore them.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

ISOLATION_HEADERS = (
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-embedder-policy", b"require-corp"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


class CrossOriginIsolation:
    """ASGI middleware adding the isolation headers to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_isolated(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in ISOLATION_HEADERS if n not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_isolated)
