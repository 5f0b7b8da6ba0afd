"""The gateway's ASGI app: the OpenAI-, Anthropic- and Ollama-compatible APIs, metrics,
and the web page.

Runs under trio (hypercorn's trio worker) in the same process as the libp2p client,
so handlers call `dinet.client.ask` directly.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import trio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dinet.client.ask import Answer, ask
from dinet.client.embed import Embeddings, embed
from dinet.client.options import AskOptions
from dinet.client.payments import channel_statuses
from dinet.client.vote import ask_replicas
from dinet.config import GatewaySettings
from dinet.errors import ModelNotFound, NoMajority, RequestError, Unauthorized, first_dinet_error
from dinet.gateway import _anthropic, _responses
from dinet.gateway import _embeddings as em
from dinet.gateway import _ollama as ol
from dinet.gateway import _ollama_models as olm
from dinet.gateway import _openai as oa
from dinet.gateway._answers import (
    PEER_HEADER,
    Event,
    EventStreamResponse,
    SseStream,
    Started,
    Tracker,
    answers_of,
)
from dinet.gateway._chunks import ChunkShelf, chunk_routes
from dinet.gateway._errors import ApiError, api_error
from dinet.gateway._isolation import CrossOriginIsolation
from dinet.gateway._metrics import CONTENT_TYPE, GatewayMetrics
from dinet.gateway._peers import NetworkView
from dinet.gateway._series import RecentChains, Series
from dinet.wire.messages import MAX_DEADLINE_MS, GenerationParams, TokenFrame
from dinet.wire.shard import Draft

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
# The browser node, bundled at set-up (`make browser`): a tab that contributes loads it here.
# DINET_BROWSER_DIR names another bundle (one built from a work tree).
BROWSER = Path(os.environ.get("DINET_BROWSER_DIR") or Path(sys.prefix) / "share" / "dinet" / "browser")
MAX_BODY_BYTES = 1_000_000
# The endpoints the page's charts count.
COMPLETIONS = ("chat", "completions", "messages", "responses", "ollama_chat", "ollama_generate")
MAX_FILTER_CHARS = 128
SHARDED_HEADER = "x-dinet-sharded"
DEADLINE_HEADER = "x-dinet-deadline-ms"

Handler = Callable[[Request], Awaitable[Response]]
ErrorBody = Callable[[ApiError], dict[str, object]]


class _Gateway:
    def __init__(self, view: NetworkView, settings: GatewaySettings) -> None:
        self.view = view
        self.settings = settings
        beside = view.node_reachability
        self.metrics = GatewayMetrics(
            lambda: len(view.network.directory.manifests()),
            view.links,
            None if beside is None else lambda: beside().state,
            view.network.host.reach_counters,
        )
        self._key = settings.api_key.get_secret_value().encode() if settings.api_key else None
        self.series = Series()  # the last hour of completions, for the page's charts
        self.chains = RecentChains()

    # -- plumbing ---------------------------------------------------------------------------

    def endpoint(
        self, name: str, fn: Handler, *, auth: bool = True, errors: ErrorBody = ApiError.body
    ) -> Handler:
        """`fn` with the API key checked, errors in the API's shape (OpenAI's unless `errors`
        says otherwise), and counted."""

        async def wrapped(request: Request) -> Response:
            try:
                if auth:
                    self._authorize(request)
                response = await fn(request)
            except Exception as exc:
                error = first_dinet_error(exc)
                if error is None:
                    logger.exception("unexpected error answering %s", name)
                    internal = ApiError(
                        500, "server_error", "internal_error", "internal error in the gateway"
                    )
                    response = self._error(internal, errors)
                else:
                    response = self._error(api_error(error), errors)
            self.metrics.requests.labels(name, str(response.status_code)).inc()
            if name in COMPLETIONS:
                self.series.request(time.time(), failed=response.status_code >= 400)
            return response

        return wrapped

    def _authorize(self, request: Request) -> None:
        """The key as OpenAI's clients send it (`Authorization: Bearer`) or Anthropic's (`x-api-key`)."""
        if self._key is None:
            return
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        given = [request.headers.get("x-api-key", "")] + ([bearer] if scheme.lower() == "bearer" else [])
        if not any(hmac.compare_digest(key.strip().encode(), self._key) for key in given):
            raise Unauthorized(
                "missing or wrong API key: send 'Authorization: Bearer KEY' or 'x-api-key: KEY'"
            )

    def _error(self, error: ApiError, body: ErrorBody = ApiError.body) -> JSONResponse:
        self.metrics.errors.labels(error.code).inc()
        headers = {"www-authenticate": "Bearer"} if error.status == 401 else None
        return JSONResponse(body(error), status_code=error.status, headers=headers)

    # -- endpoints --------------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": self.view.models()})

    async def model(self, request: Request) -> Response:
        name = request.path_params["model"]
        for entry in self.view.models():
            if entry["id"] == name:
                return JSONResponse(entry)
        raise ModelNotFound(f"no peer offers model {name!r}")

    async def browser(self, request: Request) -> Response:
        """Where a browser tab dials the node beside this gateway (`din node --api-port`):
        its peer id and WebSocket multiaddrs, those at the host the page came from first."""
        entry = self.view.node_browser
        if entry is None:
            alone = ApiError(404, "invalid_request_error", "no_node", "this gateway runs beside no node")
            return self._error(alone)
        now = entry()
        host = request.url.hostname or ""
        near = [a for a in now.addrs if f"/{host}/" in a]
        addrs = [*near, *(a for a in now.addrs if a not in near)]
        return JSONResponse({"peer_id": now.peer_id, "addrs": addrs, "relay": now.relay and bool(addrs)})

    async def network(self, request: Request) -> Response:
        query = request.query_params
        limit = query.get("limit")
        if limit is not None and not (limit.isdigit() and 1 <= int(limit) <= 100_000):
            raise RequestError("limit must be a whole number from 1 to 100000", "limit")
        for name in ("region", "model"):
            if len(query.get(name, "")) > MAX_FILTER_CHARS:
                raise RequestError(f"{name} is longer than {MAX_FILTER_CHARS} characters", name)
        snapshot = self.view.snapshot(
            query.get("region"), query.get("model"), None if limit is None else int(limit)
        )
        return JSONResponse(snapshot)

    async def network_summary(self, request: Request) -> Response:
        return JSONResponse(self.view.summary(self.chains.recent(time.time())))

    async def payments(self, request: Request) -> Response:
        """This gateway's payment channels (`din pay status`): empty without a chain."""
        network = self.view.network
        book, ledger = network.payments, network.ledger
        if book is None or ledger is None:
            return JSONResponse({"channels": []})
        me = [network.peer_id]
        rows = await trio.to_thread.run_sync(channel_statuses, ledger, book.chain, me)
        return JSONResponse({"channels": rows})

    async def network_series(self, request: Request) -> Response:
        return JSONResponse(self.series.window(time.time()))

    async def metrics_page(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def chat(self, request: Request) -> Response:
        return await self._complete(request, "chat")

    async def completion(self, request: Request) -> Response:
        return await self._complete(request, "completion")

    async def _complete(self, request: Request, kind: oa.Kind) -> Response:
        arrived = time.perf_counter()
        parsed = oa.parse_request(kind, await _json_body(request))
        params = oa.generation_params(parsed, self.settings.default_max_tokens)
        choices = oa.choice_params(params, parsed.n)
        if len(choices) > 1 and parsed.dinet.replicas > 1:
            raise RequestError("n answers and a vote over replicas do not go together", "n")
        started = await self._start_all(request, parsed, choices, arrived)
        response_id, created = oa.new_id(kind), oa.now()
        seeds = [c.seed for c in choices]
        if not parsed.stream:
            answers = await answers_of(started)
            tools = choices[0].tools
            body = oa.full_response(kind, response_id, created, answers, started[0].extra, seeds, tools)
            return JSONResponse(body, headers={PEER_HEADER: answers[0].peer_id})
        include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
        stream = SseStream(kind, response_id, created, parsed.model, started, include_usage, choices[0].tools)
        return EventStreamResponse(stream.run, started[0].stream_headers())

    async def _start_all(
        self, request: Request, parsed: oa.Request, choices: list[GenerationParams], arrived: float
    ) -> list[Started]:
        """Every choice's answer under way at once (so the router spreads them over peers);
        if one cannot start, the others are closed and its error raised."""
        started: list[Started | None] = [None] * len(choices)

        async def start(index: int) -> None:
            started[index] = await self.start_answer(
                request, parsed.model, choices[index], arrived,
                replicas=parsed.dinet.replicas, sharded=parsed.dinet_sharded, draft=parsed.dinet.draft,
            )  # fmt: skip

        try:
            async with trio.open_nursery() as nursery:
                for index in range(len(choices)):
                    nursery.start_soon(start, index)
        except BaseException:
            with trio.CancelScope(shield=True):
                for one in started:
                    if one is not None:
                        await one.events.aclose()
            raise
        return [one for one in started if one is not None]

    async def messages(self, request: Request) -> Response:
        """Anthropic's Messages API."""
        arrived = time.perf_counter()
        parsed = _anthropic.parse_request(await _json_body(request))
        params = _anthropic.generation_params(parsed)
        started = await self.start_answer(
            request, parsed.model, params, arrived, replicas=parsed.dinet.replicas
        )
        message_id = _anthropic.new_id()
        tools = {t.name for t in params.tools}
        if not parsed.stream:
            answer = await started.answer()
            body = _anthropic.message(message_id, answer, started.extra, tools)
            return JSONResponse(body, headers={PEER_HEADER: answer.peer_id})
        shape = _anthropic.MessageStream(message_id, parsed.model, tools)
        return EventStreamResponse(partial(started.stream, shape), started.stream_headers())

    async def responses(self, request: Request) -> Response:
        """OpenAI's Responses API."""
        arrived = time.perf_counter()
        parsed = _responses.parse_request(await _json_body(request))
        params = _responses.generation_params(parsed, self.settings.default_max_tokens)
        started = await self.start_answer(
            request, parsed.model, params, arrived, replicas=parsed.dinet.replicas
        )
        echo = _responses.Echo.of(parsed, params)
        if not parsed.stream:
            answer = await started.answer()
            return JSONResponse(
                _responses.response_body(echo, answer, started.extra), headers={PEER_HEADER: answer.peer_id}
            )
        return EventStreamResponse(
            partial(started.stream, _responses.ResponseStream(echo)), started.stream_headers()
        )

    async def start_answer(
        self,
        request: Request,
        model: str,
        params: GenerationParams,
        arrived: float,
        *,
        replicas: int = 1,
        sharded: bool | None = None,
        draft: Draft = "none",
    ) -> Started:
        """Ask the network for `params` and wait for the first event, so that a request no
        peer can take gets a proper status code rather than an error inside a 200 stream.
        Every API the gateway speaks (OpenAI's, Ollama's, ...) answers through here.
        `sharded`: the request's own choice of a chain; None defers to the header. `draft`:
        how a chain guesses tokens (`AskOptions.draft`)."""
        choice = await self.view.resolve(model)
        if params.uses_tools:
            choice = self.view.tool_model(choice, model)
        attempts: list[str] = []
        extra: dict[str, object] = {"seed": params.seed}  # the same request with it replays the answer
        options = AskOptions.from_settings(
            self.settings,
            model_id=choice.model_id,
            model_hash=choice.model_hash,
            deadline_s=_deadline_s(request),
            draft=draft,
        )
        if replicas > 1:
            vote = await ask_replicas(self.view.network, params, replicas, options)
            if vote.answer is None:
                raise NoMajority(vote.explain())
            extra["vote"] = vote.summary()
            attempts.append(vote.answer.peer_id)
            events = _replay(vote.frames, vote.answer)
        else:
            # `ask` is an async generator (annotated as an iterator): it must be closed.
            events = cast(
                AsyncGenerator[Event, None],
                ask(
                    self.view.network,
                    params,
                    options.with_(sharded=sharded if sharded is not None else _sharded_header(request)),
                    on_attempt=attempts.append,
                ),
            )
        try:
            first = await events.__anext__()
        except BaseException:
            await events.aclose()
            raise
        tracker = Tracker(self.metrics, self.series, self.chains, arrived)
        tracker.see(first)
        return Started(first, events, tracker, attempts, extra)

    # -- embeddings (both APIs' shapes: _embeddings) --------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        parsed, inputs = em.parse_openai(await _json_body(request), self.view.models())
        result = await self._embed(parsed.model, inputs)
        return JSONResponse(em.openai_response(parsed, result), headers={PEER_HEADER: result.peer_id})

    async def _embed(self, model: str, inputs: list[str]) -> Embeddings:
        entry = em.embedding_model(model, self.view.models())
        options = AskOptions.from_settings(self.settings, model_id=str(entry["id"]))
        return await embed(self.view.network, inputs, options)

    # -- Ollama's API (its shapes: _ollama, _ollama_models) ----------------------------------

    async def ollama_chat(self, request: Request) -> Response:
        return await self._ollama_answer(request, "chat")

    async def ollama_generate(self, request: Request) -> Response:
        return await self._ollama_answer(request, "generate")

    async def _ollama_answer(self, request: Request, kind: ol.Kind) -> Response:
        arrived = time.perf_counter()
        models = self.view.models()
        parsed = ol.parse_request(kind, await _json_body(request), models, self.settings.default_max_tokens)
        if parsed.params is None:
            await self.view.resolve(parsed.model)  # a 404 for a model the network does not offer
            return JSONResponse(ol.loaded(kind, parsed.model))
        started = await self.start_answer(request, parsed.model, parsed.params, arrived)
        if parsed.stream:
            shape = ol.NdjsonShape(kind, parsed.model, started.tracker, parsed.tool_names)
            stream = partial(started.stream, shape)
            return EventStreamResponse(stream, started.stream_headers(), media_type=ol.NDJSON)
        answer = await started.answer()
        timing = ol.Timing(arrived, started.tracker.first_at, time.perf_counter())
        body = ol.finished(kind, parsed.model, answer, answer.text, timing, started.extra, parsed.tool_names)
        return JSONResponse(body, headers={PEER_HEADER: answer.peer_id})

    async def ollama_embed(self, request: Request) -> Response:
        started = time.perf_counter()
        parsed, model_id, inputs = em.parse_ollama(await _json_body(request), self.view.models())
        result = await self._embed(model_id, inputs)
        context = next(int(str(m["context"])) for m in self.view.models() if m["id"] == model_id)
        body = em.ollama_response(parsed, context, result, started)
        return JSONResponse(body, headers={PEER_HEADER: result.peer_id})

    async def ollama_embeddings(self, request: Request) -> Response:
        model_id, prompt = em.parse_ollama_legacy(await _json_body(request), self.view.models())
        result = await self._embed(model_id, [prompt])
        body = {"embedding": result.vectors[0].tolist(), "dinet": em.dinet_extra(result)}
        return JSONResponse(body, headers={PEER_HEADER: result.peer_id})

    async def ollama_tags(self, request: Request) -> Response:
        return JSONResponse(olm.tags(self.view.models()))

    async def ollama_ps(self, request: Request) -> Response:
        return JSONResponse(olm.running(self.view.models()))

    async def ollama_show(self, request: Request) -> Response:
        return JSONResponse(olm.show(self.view.models(), await _json_body(request)))

    async def ollama_pull(self, request: Request) -> Response:
        return olm.pull(self.view.models(), await _json_body(request))


def _sharded_header(request: Request) -> bool | None:
    """Chain or whole model as the `x-dinet-sharded` header asks; None without it."""
    header = request.headers.get(SHARDED_HEADER, "").strip().lower()
    if header in ("1", "true", "yes"):
        return True
    if header in ("0", "false", "no"):
        return False
    return None


def _deadline_s(request: Request) -> float | None:
    """The `x-dinet-deadline-ms` header in seconds (None without it); RequestError if bad."""
    header = request.headers.get(DEADLINE_HEADER)
    if header is None:
        return None
    text = header.strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_DEADLINE_MS:
        raise RequestError(
            f"{DEADLINE_HEADER} must be a whole number of milliseconds from 1 to {MAX_DEADLINE_MS}",
            DEADLINE_HEADER,
        )
    return int(text) / 1000


async def _replay(frames: tuple[TokenFrame, ...], answer: Answer) -> AsyncGenerator[Event, None]:
    """A decided vote's answer as the events of an ordinary one."""
    for frame in frames:
        yield frame
    yield answer


async def _json_body(request: Request) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise RequestError(f"request body above {MAX_BODY_BYTES} bytes")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(f"request body above {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}") from None


def build_app(view: NetworkView, settings: GatewaySettings) -> Starlette:
    """The ASGI app of a gateway in front of `view`'s network."""
    gw = _Gateway(view, settings)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/v1/models", gw.endpoint("models", gw.models), methods=["GET"]),
        Route("/v1/models/{model:path}", gw.endpoint("model", gw.model), methods=["GET"]),
        Route("/v1/chat/completions", gw.endpoint("chat", gw.chat), methods=["POST"]),
        Route("/v1/completions", gw.endpoint("completions", gw.completion), methods=["POST"]),
        Route(
            "/v1/messages",
            gw.endpoint("messages", gw.messages, errors=ApiError.anthropic_body),
            methods=["POST"],
        ),
        Route("/v1/responses", gw.endpoint("responses", gw.responses), methods=["POST"]),
        Route("/v1/embeddings", gw.endpoint("embeddings", gw.embeddings), methods=["POST"]),
        # No key: a tab asks before it has one, and the answer is what the node advertises anyway.
        Route("/api/browser", gw.endpoint("browser", gw.browser, auth=False), methods=["GET"]),
        Route("/api/network", gw.endpoint("network", gw.network), methods=["GET"]),
        Route("/api/network/summary", gw.endpoint("network_summary", gw.network_summary), methods=["GET"]),
        Route("/api/network/series", gw.endpoint("network_series", gw.network_series), methods=["GET"]),
        Route("/api/payments", gw.endpoint("payments", gw.payments), methods=["GET"]),
        Route("/metrics", gw.endpoint("metrics", gw.metrics_page), methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Mount("/browser", StaticFiles(directory=BROWSER, check_dir=False), name="browser"),
        *chunk_routes(ChunkShelf(settings.home), lambda name, fn: gw.endpoint(name, fn, auth=False)),
        *_ollama_routes(gw),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(CrossOriginIsolation)])
    app.state.gateway = gw
    return app


def _ollama_routes(gw: _Gateway) -> list[Route]:
    """Ollama's API; `/` (which its clients probe with HEAD) stays the page."""

    def route(path: str, name: str, fn: Handler, method: str) -> Route:
        return Route(path, gw.endpoint(name, fn, errors=ol.error_body), methods=[method])

    async def version(request: Request) -> Response:
        return JSONResponse(olm.version())

    return [
        route("/api/chat", "ollama_chat", gw.ollama_chat, "POST"),
        route("/api/generate", "ollama_generate", gw.ollama_generate, "POST"),
        route("/api/tags", "ollama_tags", gw.ollama_tags, "GET"),
        route("/api/ps", "ollama_ps", gw.ollama_ps, "GET"),
        route("/api/show", "ollama_show", gw.ollama_show, "POST"),
        route("/api/pull", "ollama_pull", gw.ollama_pull, "POST"),
        route("/api/version", "ollama_version", version, "GET"),
        route("/api/embed", "ollama_embed", gw.ollama_embed, "POST"),
        route("/api/embeddings", "ollama_embeddings", gw.ollama_embeddings, "POST"),
    ]
