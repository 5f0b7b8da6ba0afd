"""The library client for plain synchronous code: `dinet.Client(...)`.

    with dinet.Client(bootstrap=["/ip4/.../p2p/12D3KooW..."]) as client:
        print(client.ask("What is a GGUF file?").text)
        for text in client.stream("Tell me a story."):
            print(text, end="", flush=True)

trio runs on a thread of the client's own, with one `AsyncClient`; each call becomes a
task there and the calling thread waits for its result. Ctrl-C while waiting cancels
that task (the peer stops generating) and raises KeyboardInterrupt at once; `close()`
(or leaving the `with` block) stops the thread; a client nobody closed is closed when it
is garbage-collected, or at exit.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, Unpack

import trio

from dinet.client._async_client import AsyncClient, AsyncStream, Peer, _open, client_settings
from dinet.client._request import Options
from dinet.client.ask import Answer
from dinet.client.embed import Embeddings
from dinet.config import ClientSettings
from dinet.errors import ClientClosed, DinetError, first_dinet_error
from dinet.models.fetch import PullReport
from dinet.wire.ids import PeerId

_T = TypeVar("_T")
CLOSE_WAIT_S = 10.0  # the network's own shutdown (closing connections) takes well under this


class Client:
    """A client of the network for synchronous code, usable from any thread.

    `bootstrap`: multiaddrs of peers to join through; `home`: where the client keeps its
    identity, receipts and reputations (default: the user data directory, shared with
    `din ask`). Other keywords are `ClientSettings` fields (`mdns`, `max_price`,
    `verify_rate`, `request_timeout_s`, ...). Raises ConfigError for a bad setting and
    PeerUnreachable when no bootstrap peer answers.
    """

    def __init__(
        self, bootstrap: Sequence[str] = (), home: str | Path | None = None, **settings: Any
    ) -> None:
        self.settings = client_settings(bootstrap, home, settings)
        self._loop = _TrioThread(self.settings)
        # Closed when forgotten, or at the latest when the interpreter exits.
        self._finalizer = weakref.finalize(self, self._loop.stop)

    @property
    def peer_id(self) -> PeerId:
        return self._loop.client.peer_id

    def ask(self, prompt: str, **options: Unpack[Options]) -> Answer:
        """One answer to `prompt` (a user message). Options: see `dinet.Options`."""
        client = self._loop.client
        return self._loop.call(lambda: client.ask(prompt, **options))

    def chat(self, messages: Sequence[Mapping[str, Any]], **options: Unpack[Options]) -> Answer:
        """The next assistant message after `messages`: OpenAI-style dicts,
        `{"role": "system" | "user" | "assistant", "content": "..."}`."""
        client = self._loop.client
        return self._loop.call(lambda: client.chat(messages, **options))

    def stream(
        self, prompt_or_messages: str | Sequence[Mapping[str, Any]], **options: Unpack[Options]
    ) -> Stream:
        """The answer's texts as they arrive (`for text in ...`); `.answer` after the end.
        A bad option raises RequestError here, before anything is sent."""
        # Only a generator is made here: the answer is asked for when iteration starts.
        return Stream(self._loop, self._loop.client.stream(prompt_or_messages, **options))

    def embed(self, texts: str | Sequence[str], *, model: str | None = None, **options: Any) -> Embeddings:
        """Vectors for `texts` from a peer serving an embedding model; see `AsyncClient.embed`."""
        client = self._loop.client
        return self._loop.call(lambda: client.embed(texts, model=model, **options))

    def peers(self, *, wait_s: float = 0.0) -> list[Peer]:
        """The peers found so far (looking for more for `wait_s` seconds), by peer id."""
        client = self._loop.client
        return self._loop.call(lambda: client.peers(wait_s=wait_s))

    def pull(self, model: str, *, timeout_s: float = 15.0) -> PullReport:
        """Fetch a model (an id peers offer, or a model hash) into this client's home."""
        client = self._loop.client
        return self._loop.call(lambda: client.pull(model, timeout_s=timeout_s))

    def close(self) -> None:
        """Leave the network and stop the client's thread. Calls still waiting raise ClientClosed."""
        self._finalizer()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Stream:
    """The texts of an answer's tokens as they arrive; `answer` once iteration has ended.

    Iterate it once. Leaving the loop early (break, an exception, Ctrl-C) stops the answer.
    """

    def __init__(self, loop: _TrioThread, stream: AsyncStream) -> None:
        self._loop = loop
        self._stream = stream
        self._iterated = False
        self._task: _Task | None = None
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        if self._iterated:
            return
        self._iterated = True
        items: queue.SimpleQueue[str | _End] = queue.SimpleQueue()
        self._task = self._loop.spawn(
            lambda: _produce(self._stream, items), refused=lambda error: items.put(_End(error))
        )
        try:
            while not isinstance(item := items.get(), _End):
                yield item
        finally:
            self._task.cancel()  # a no-op once the answer is complete
        if item.error is not None:
            raise item.error
        self.answer = item.answer

    def close(self) -> None:
        """Stop the answer if it is still coming (as leaving a `for` loop over it does)."""
        if self._task is not None:
            self._task.cancel()
        elif not self._iterated:
            self._iterated = True
            self._loop.call(self._stream.aclose)

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass(frozen=True)
class _End:
    error: BaseException | None = None
    answer: Answer | None = None


async def _produce(stream: AsyncStream, items: queue.SimpleQueue[str | _End]) -> None:
    end = _End(ClientClosed("the answer was stopped"))
    try:
        async with stream:
            async for text in stream:
                items.put(text)
        end = _End(answer=stream.answer)
    except Exception as exc:  # handed to the iterating thread
        end = _End(exc)
    finally:
        items.put(end)


class _Task:
    """A task in the client's trio thread, cancellable from any thread."""

    def __init__(self, loop: _TrioThread) -> None:
        self._loop = loop
        self.scope = trio.CancelScope()

    def cancel(self) -> None:
        self._loop.soon(self.scope.cancel)


class _TrioThread:
    """trio on a thread of its own, holding one AsyncClient until `stop()`."""

    def __init__(self, settings: ClientSettings) -> None:
        self._started = threading.Event()  # the loop runs: `soon` works
        self._ready = threading.Event()  # the client is open, or failed to open
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._everything = trio.CancelScope()
        self._stopping: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self._client: AsyncClient | None = None
        self._thread = threading.Thread(
            target=trio.run, args=(self._main, settings), name="dinet-client", daemon=True
        )
        self._thread.start()
        try:
            self._ready.wait()
        except BaseException:  # Ctrl-C while joining the network: leave nothing running
            self._started.wait(CLOSE_WAIT_S)
            self.soon(self._everything.cancel)
            self._thread.join(CLOSE_WAIT_S)
            raise
        if self._error is not None:
            self._thread.join(CLOSE_WAIT_S)
            raise self._error

    async def _main(self, settings: ClientSettings) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stopping = trio.Event()
        self._started.set()
        try:
            with self._everything:
                async with _open(settings) as client, trio.open_nursery() as nursery:
                    self._client, self._nursery = client, nursery
                    self._ready.set()
                    await self._stopping.wait()
                    nursery.cancel_scope.cancel()  # calls in flight end with ClientClosed
        except Exception as exc:  # the caller's thread raises it, now or at its next call
            self._error = first_dinet_error(exc) or ClientClosed(f"the client's network stopped: {exc!r}")
        finally:
            self._client = None
            self._ready.set()

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            raise self._closed()
        return self._client

    def _closed(self) -> ClientClosed:
        if isinstance(self._error, DinetError) and not isinstance(self._error, ClientClosed):
            return ClientClosed(f"the client's network stopped: {self._error}")
        return ClientClosed("the client is closed")

    def soon(self, fn: Callable[[], object]) -> bool:
        """Have the trio thread run `fn` soon; False if it has ended."""
        if self._token is None:
            return False
        try:
            self._token.run_sync_soon(fn)
        except trio.RunFinishedError:
            return False
        return True

    def spawn(self, work: Callable[[], Awaitable[None]], refused: Callable[[ClientClosed], None]) -> _Task:
        """Start `work()` as a task of the client, which cancels it when it closes; `refused`
        hears why if it cannot start at all."""
        task = _Task(self)
        nursery = self._nursery
        if nursery is None or self._client is None:
            raise self._closed()

        async def run() -> None:
            with task.scope:
                await work()

        def start() -> None:  # in the trio thread, where raising would end the run
            try:
                nursery.start_soon(run)
            except RuntimeError:  # the client closed meanwhile
                refused(self._closed())

        if not self.soon(start):
            refused(self._closed())
        return task

    def call(self, work: Callable[[], Awaitable[_T]]) -> _T:
        """`await work()` in the trio thread; its result or exception here. Ctrl-C cancels it."""
        done: queue.SimpleQueue[tuple[_T] | BaseException] = queue.SimpleQueue()
        stopped = self._closed()

        async def attempt() -> None:
            result: tuple[_T] | BaseException = stopped  # unless it finishes: the client closed
            try:
                result = (await work(),)
            except Exception as exc:  # handed to the calling thread
                result = exc
            finally:
                done.put(result)

        task = self.spawn(attempt, refused=done.put)
        try:
            result = done.get()
        except BaseException:
            task.cancel()  # Ctrl-C: the work stops too
            raise
        if isinstance(result, BaseException):
            raise result
        return result[0]

    def stop(self) -> None:
        stopping = self._stopping
        if stopping is not None:
            self.soon(stopping.set)
        if threading.current_thread() is not self._thread:
            self._thread.join(CLOSE_WAIT_S)
