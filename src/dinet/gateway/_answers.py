"""Answers under way, and how they are streamed: shared by every API the gateway speaks.

`Started` is an answer whose first event has come (`_Gateway.start_answer`); each API
reads it whole (`answer`) or streams it in its own shape (`stream` with a `StreamShape`;
OpenAI's chat and completions with `SseStream`, which also interleaves `n` choices).
`EventStreamResponse` sends a stream and stops its producer when the client goes away.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

import trio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from dinet.client.ask import Answer
from dinet.errors import first_dinet_error
from dinet.gateway import _openai as oa
from dinet.gateway._errors import ApiError, api_error
from dinet.gateway._metrics import GatewayMetrics
from dinet.gateway._series import RecentChains, Series
from dinet.gateway._tools import Call, CallSplitter
from dinet.wire.messages import TokenFrame, Tool

logger = logging.getLogger(__name__)

PEER_HEADER = "x-dinet-peer"
Event = TokenFrame | Answer
Write = Callable[[bytes], Awaitable[None]]


async def answers_of(choices: list[Started]) -> list[Answer]:
    """Each choice's whole answer, read at once."""
    answers: list[Answer | None] = [None] * len(choices)

    async def read(index: int) -> None:
        answers[index] = await choices[index].answer()

    async with trio.open_nursery() as nursery:
        for index in range(len(choices)):
            nursery.start_soon(read, index)
    return [a for a in answers if a is not None]


@dataclass
class Started:
    """An answer under way: its first event has arrived (`first`), the rest follow in
    `events`; `extra` holds what the gateway adds to the response's `dinet` field."""

    first: Event
    events: AsyncGenerator[Event, None]
    tracker: Tracker
    attempts: list[str]  # the peers tried, in order
    extra: dict[str, object]

    async def all_events(self) -> AsyncGenerator[Event, None]:
        """Every event, the first included, each seen by the metrics; closes the answer."""
        async with aclosing(self.events):
            yield self.first
            async for event in self.events:
                self.tracker.see(event)
                yield event

    async def answer(self) -> Answer:
        """The whole answer, for a response that is not streamed."""
        answer: Answer | None = None
        async with aclosing(self.all_events()) as events:
            async for event in events:
                if isinstance(event, Answer):
                    answer = event
        assert answer is not None  # ask always ends with its Answer
        self.tracker.finish(answer)
        return answer

    async def stream(self, shape: StreamShape, write: Write) -> None:
        """Write the answer as `shape`'s events. A failure after the first event can no longer
        change the status: it becomes the shape's error event, and is counted."""
        await write(shape.opening())
        try:
            async with aclosing(self.all_events()) as events:
                async for event in events:
                    if isinstance(event, Answer):
                        self.tracker.finish(event)
                        await write(shape.closing(event, self.extra))
                    elif event.text:
                        await write(shape.text(event.text))
        except Exception as exc:
            error = first_dinet_error(exc)
            if error is None:
                logger.exception("unexpected error while streaming")
                raise
            api = api_error(error)
            self.tracker.failed(api)
            await write(shape.failure(api))

    def stream_headers(self) -> dict[str, str]:
        headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
        if self.attempts:
            # The peer that sent the first token; the answer's last event names the one
            # that finished it (they differ only after a failover).
            headers[PEER_HEADER] = self.attempts[-1]
        return headers


class StreamShape(Protocol):
    """How one API draws a streamed answer: each method gives the bytes of its events."""

    def opening(self) -> bytes: ...
    def text(self, text: str) -> bytes: ...
    def closing(self, answer: Answer, extra: dict[str, object]) -> bytes: ...
    def failure(self, error: ApiError) -> bytes: ...


class Tracker:
    """Times one answer for the metrics and the page's series; notes its chain."""

    def __init__(self, metrics: GatewayMetrics, series: Series, chains: RecentChains, arrived: float) -> None:
        self.metrics, self.series, self.chains = metrics, series, chains
        self.arrived = arrived
        self.first_at: float | None = None
        self.tokens = 0

    def see(self, event: Event) -> None:
        if isinstance(event, TokenFrame):
            if self.first_at is None:
                self.first_at = time.perf_counter()
                self.metrics.ttft.observe(self.first_at - self.arrived)
                self.series.first_token(time.time(), self.first_at - self.arrived)
            self.tokens += 1
            self.series.tokens(time.time())

    def finish(self, answer: Answer) -> None:
        self.chains.used(time.time(), answer.model_id, answer.chain)
        self.metrics.tokens.labels("prompt").inc(answer.usage.prompt_tokens)
        self.metrics.tokens.labels("completion").inc(answer.usage.completion_tokens)
        if self.first_at is not None and self.tokens > 1:
            self.metrics.time_per_token.observe((time.perf_counter() - self.first_at) / (self.tokens - 1))

    def failed(self, error: ApiError) -> None:
        self.metrics.errors.labels(error.code).inc()
        self.series.error(time.time())


class SseStream:
    """The body of a streamed answer: one `data:` event per token, then `data: [DONE]`.
    With `n` choices their tokens interleave as they come, each chunk naming its choice."""

    def __init__(
        self,
        kind: oa.Kind,
        response_id: str,
        created: int,
        model: str,
        choices: list[Started],
        include_usage: bool,
        tools: Sequence[Tool] = (),
    ) -> None:
        self.kind, self.response_id, self.created = kind, response_id, created
        self.model, self.choices, self.include_usage = model, choices, include_usage
        # With tools offered, each choice's calls are read out of its text as it streams.
        names = {t.name for t in tools}
        self.splitters = [CallSplitter(names) for _ in choices] if names and kind == "chat" else None

    def _event(self, payload: dict[str, object]) -> bytes:
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    async def run(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        sending, receiving = trio.open_memory_channel[tuple[int, Event]](0)
        answers: list[Answer] = []
        self._sent_first: set[int] = set()
        try:
            async with trio.open_nursery() as nursery:
                for index, started in enumerate(self.choices):
                    nursery.start_soon(self._pump, index, started, sending.clone())
                sending.close()
                async with receiving:
                    async for index, event in receiving:
                        if isinstance(event, Answer):
                            answers.append(event)
                            if self.splitters is not None:
                                await self._calls(write, index, self.splitters[index].finish(), [])
                            await write(self._event(self._last(index, event)))
                        elif self.splitters is not None:
                            await self._calls(write, index, *self.splitters[index].feed(event.text))
                        elif event.text or event.logprobs is not None:
                            chunk = oa.chunk(
                                self.kind,
                                self.response_id,
                                self.created,
                                self.model,
                                event.text,
                                first=index not in self._sent_first,
                                logprobs=event.logprobs,
                                index=index,
                            )
                            await write(self._event(chunk))
                            self._sent_first.add(index)
        except Exception as exc:
            error = first_dinet_error(exc)
            if error is None:
                logger.exception("unexpected error while streaming")
                raise
            api = api_error(error)
            self.choices[0].tracker.failed(api)
            await write(self._event(api.body()))
            return
        if self.include_usage:
            usage_chunk = oa.chunk(self.kind, self.response_id, self.created, answers[0].model_id, None)
            usage_chunk["choices"] = []
            usage_chunk["usage"] = oa.usage(*answers)
            await write(self._event(usage_chunk))
        await write(b"data: [DONE]\n\n")

    async def _calls(self, write: Write, index: int, text: str, calls: list[Call]) -> None:
        """A choice's text and tool calls, as far as its splitter has read them."""
        first = index not in self._sent_first
        if text:
            await write(
                self._event(
                    oa.chunk(
                        self.kind, self.response_id, self.created, self.model, text, first=first, index=index
                    )
                )
            )
            first = False
        if calls:
            splitter = self.splitters[index]  # type: ignore[index]
            numbered = [call.openai(splitter.calls - len(calls) + i) for i, call in enumerate(calls)]
            chunk = oa.chunk(
                self.kind,
                self.response_id,
                self.created,
                self.model,
                None,
                first=first,
                index=index,
                tool_calls=numbered,
            )
            await write(self._event(chunk))
            first = False
        if not first:
            self._sent_first.add(index)

    @staticmethod
    async def _pump(index: int, started: Started, out: trio.MemorySendChannel[tuple[int, Event]]) -> None:
        async with out, aclosing(started.all_events()) as events:
            async for event in events:
                if isinstance(event, Answer):
                    started.tracker.finish(event)
                await out.send((index, event))

    def _last(self, index: int, answer: Answer) -> dict[str, object]:
        """A choice's closing chunk: its finish reason, who served it, and (unless a usage
        chunk follows) its usage."""
        called = self.splitters is not None and self.splitters[index].calls > 0
        last = oa.chunk(
            self.kind,
            self.response_id,
            self.created,
            answer.model_id,
            None,
            finish_reason=oa.finish_reason(answer.finish_reason, called),
            index=index,
        )
        last["dinet"] = {**oa.dinet_extra(answer), **self.choices[index].extra}
        if not self.include_usage:
            last["usage"] = oa.usage(answer)
        return last


class EventStreamResponse(Response):
    """A streamed response (server-sent events unless `media_type` says otherwise) that
    stops its producer when the client goes away."""

    def __init__(
        self,
        produce: Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]],
        headers: dict[str, str],
        media_type: str = "text/event-stream",
    ) -> None:
        super().__init__(None, status_code=200, headers=headers, media_type=media_type)
        # The length is unknown: drop the `content-length: 0` Starlette adds for an empty body.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self._produce = produce

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})

        async def write(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_on_disconnect, receive, nursery.cancel_scope)
            await self._produce(write)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            nursery.cancel_scope.cancel()


async def cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return
