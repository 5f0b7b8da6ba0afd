"""The node's side of a llama.cpp worker process: spawn, stream, survive its death.

    async with WorkerEngine(default_model_path(), threads=2) as engine:
        async with aclosing(engine.generate(params)) as stream:
            async for frame in stream:
                ...  # TokenFrame..., then one EndFrame or ErrorFrame

A worker that dies mid-request (killed, segfault, out of memory) raises
`EngineCrashed` in the stream; a replacement is spawned at once and loads while the
caller fails over, so the next request finds it ready. A worker runs `slots` requests
at once, decoded together (one by default); more wait. A stream abandoned early
cancels its request in the worker, so the next request does not wait for tokens nobody
reads.

Restarts are bounded: a worker that dies before it is ready, or mid-request, again and
again (a model file that passes the header checks yet crashes llama.cpp) is respawned
after a growing delay, and after `max_restarts` failures in a row, with no request
completed between them, the engine gives up: `failed` says why, and every request gets
EngineUnavailable at once instead of a crash loop. A worker that exits saying it could
not load the model (llama.cpp refused the file) is not retried at all.

Workers (`worker_process`) run in the sandbox (`dinet.engine.sandbox`) and speak
the worker protocol (`dinet.engine.worker_protocol`). `preflight` checks the model
file before every spawn (the node passes the GGUF validator), so a bad file is
refused before llama.cpp sees it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections import defaultdict, deque
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, NoReturn, Self, TypeAlias

import trio

from dinet.engine.info import ModelInfo
from dinet.engine.sandbox import UNSANDBOXED, SandboxStatus, launcher_env, sandboxed, warn_once
from dinet.engine.worker_protocol import CANCEL_PAYLOAD, EXIT_LOAD_FAILED, WorkerReady
from dinet.errors import EngineCrashed, EngineUnavailable, MalformedMessage, ModelError, WireError
from dinet.wire.framing import FrameReader, encode_frame
from dinet.wire.messages import (
    EndFrame,
    ErrorFrame,
    GenerationParams,
    QueuedFrame,
    TokenFrame,
    decode_reply,
    encode,
)
from dinet.wire.verify import ScoreRequest, ScoresFrame, decode_scores

logger = logging.getLogger(__name__)

Reply: TypeAlias = TokenFrame | EndFrame | ErrorFrame
_CANCEL_GRACE_S = 5.0  # an abandoned request must end this soon, or the worker is killed
_EXIT_GRACE_S = 1.0
_LOG_TAIL_BYTES = 2000
_LOG_ROTATE_BYTES = 16 << 20  # a longer log moves to .1 at the next spawn (the sandbox caps growth)
_MAX_BACKOFF_S = 60.0
SCORE_LIMIT_S = 60.0  # one prefill of at most a context's worth of tokens
_SCORING_COPY_LIMIT_S = 120.0


class _Worker:
    """One live process and its pipes."""

    def __init__(self, process: trio.Process, log: IO[bytes]) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self.stdin = process.stdin
        self.stdout = process.stdout
        self.frames = FrameReader(process.stdout.receive_some)
        self.log = log
        self.log_tail = ""  # the end of its log, kept when the pipes close
        self.ready: WorkerReady | None = None
        self.crash: str | None = None  # why it was discarded, once it has been
        # With several streams (`slots` > 1) frames carry a stream byte: whoever holds
        # `reading` reads the next frame and files it in its stream's inbox.
        self.sending = trio.Lock()
        self.reading = trio.Lock()
        self.inbox: defaultdict[int, deque[bytes]] = defaultdict(deque)

    def _read_log_tail(self) -> str:
        self.log.flush()
        size = self.log.seek(0, os.SEEK_END)
        self.log.seek(max(0, size - _LOG_TAIL_BYTES))
        return self.log.read().decode("utf-8", "replace").strip()

    async def stop(self) -> int:
        """End the process (EOF, then SIGKILL) and reap it; returns its exit code."""
        with trio.CancelScope(shield=True):
            await self.stdin.aclose()
            with trio.move_on_after(_EXIT_GRACE_S):
                return await self.process.wait()
            self.process.kill()
            return await self.process.wait()

    async def close_pipes(self) -> None:
        with trio.CancelScope(shield=True):
            await self.stdin.aclose()
            await self.stdout.aclose()
        if not self.log.closed:
            self.log_tail = self._read_log_tail()
            self.log.close()


class WorkerEngine:
    """Owns one worker process serving one GGUF model."""

    def __init__(
        self,
        model_path: Path | str,
        *,
        threads: int = 2,
        n_ctx: int = 2048,
        memory_mb: int | None = None,
        slots: int = 1,
        prefix_cache_mb: int = 0,
        extra_bufts: Literal["auto", "on", "off"] = "auto",
        ready_timeout: float = 120.0,
        log_path: Path | None = None,
        sandbox: bool = True,
        preflight: Callable[[Path], object] | None = None,
        max_restarts: int = 3,
        restart_backoff_s: float = 1.0,
        liar: str | None = None,
        score_cache: Path | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self._argv = [
            sys.executable, "-m", "dinet.engine.llama.worker_process",
            "--model", str(self.model_path),
            "--threads", str(threads),
            "--ctx", str(n_ctx),
            "--extra-bufts", extra_bufts,
        ]  # fmt: skip
        if prefix_cache_mb > 0:  # generation workers only: the embedding worker has no cache
            self._argv += ["--prefix-cache-mb", str(prefix_cache_mb)]
        if slots > 1:  # requests decoded together, their frames tagged with a stream byte
            self._argv += ["--slots", str(slots)]
        if memory_mb is not None:  # the worker sets it too, to name it when loading fails
            self._argv += ["--memory-mb", str(memory_mb)]
        self._weights = self.model_path  # what the worker loads: a wrong-model liar loads another file
        if liar is not None:  # testing only; the worker refuses it without DINET_ALLOW_LIARS=1
            self._argv += ["--liar", liar]
            if liar.startswith("wrong-model:"):
                self._weights = Path(liar.partition(":")[2])
        self._score_cache = score_cache  # where the BF16 copy verification scores with is kept
        self._score_model: Path | None = None
        self._threads = threads
        self._memory_mb = memory_mb
        self._sandboxed = sandbox
        self._preflight = preflight
        self._max_restarts = max_restarts
        self._backoff_s = restart_backoff_s
        self._failures = 0  # in a row, since a request last completed
        self._respawn_at = 0.0  # trio clock: no spawn before this
        self.failed: str | None = None  # why the engine gave up, once it has
        self.sandbox_status: SandboxStatus | None = None
        self._ready_timeout = ready_timeout
        self._log_path = log_path
        self._slots = slots
        self._slot = trio.Semaphore(slots)  # not a Lock: an abandoned stream may end in another task
        self._streams = list(range(slots))  # stream bytes not in use
        self._task_streams: dict[trio.lowlevel.Task, int] = {}  # whose stream is whose, for reply_buffered
        self._starting = trio.Lock()  # one spawn at a time, however many requests wait for it
        self._worker: _Worker | None = None
        self._info: ModelInfo | None = None
        self._started = False
        self._closed = False
        self.restarts = 0

    # -- public surface -------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise EngineUnavailable("the engine worker has not started yet")
        return self._info

    @property
    def pid(self) -> int | None:
        return self._worker.process.pid if self._worker is not None else None

    @property
    def reply_buffered(self) -> bool:
        """Whether the next reply of the calling task's stream has already arrived (the
        worker writes tokens in batches)."""
        worker = self._worker
        if worker is None:
            return False
        if self._slots == 1:
            return worker.frames.has_frame()
        stream = self._task_streams.get(trio.lowlevel.current_task())
        return stream is not None and bool(worker.inbox[stream])

    @property
    def available(self) -> bool:
        return self.failed is None and not self._closed

    async def start(self) -> None:
        """Spawn the worker and wait until its model is loaded, retrying with backoff.

        EngineUnavailable once the restart budget is spent, ModelError (from
        `preflight`) for a file that must not be loaded at all.
        """
        async with self._slot:
            while True:
                try:
                    await self._ready_worker()
                    return
                except EngineUnavailable:
                    if self.failed is not None or self._closed:
                        raise

    async def aclose(self) -> None:
        """Stop the worker and reap it. Idempotent."""
        self._closed = True
        worker, self._worker = self._worker, None
        if worker is not None:
            code = await worker.stop()
            await worker.close_pipes()
            logger.info("engine worker %d stopped (%s)", worker.process.pid, _describe(code))

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def generate(self, params: GenerationParams) -> AsyncGenerator[Reply, None]:
        """Stream one request: TokenFrames, then exactly one EndFrame or ErrorFrame.

        Raises EngineCrashed if the worker dies meanwhile (a replacement is already
        loading), EngineUnavailable if no worker can be started. Use it under
        `contextlib.aclosing` when the stream may be left before its end.
        """
        async with self._slot:
            worker = await self._ready_worker()
            stream = self._streams.pop()
            reader = trio.lowlevel.current_task()  # an abandoned stream may end in another task
            self._task_streams[reader] = stream
            done = False
            try:
                try:
                    await self._send(worker, stream, encode(params))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._crashed(worker, "it stopped reading requests")
                while not done:
                    reply = await self._next_reply(worker, stream)
                    done = not isinstance(reply, TokenFrame)
                    if isinstance(reply, EndFrame):
                        self._failures = 0  # a completed request: the model works
                    yield reply
            finally:
                if not done and self._worker is worker and worker.crash is None:
                    await self._abandon(worker, stream)
                del self._task_streams[reader]
                self._streams.append(stream)

    async def score(self, request: ScoreRequest) -> ScoresFrame | ErrorFrame:
        """Re-score a claimed completion (verification): one ScoresFrame or ErrorFrame.

        The exchange is shielded from cancellation: a reply left unread would be taken
        for the next request's. Scoring is one prefill, so it ends soon; a worker that
        takes over SCORE_LIMIT_S is replaced (EngineCrashed).
        """
        async with self._slot:
            worker = await self._ready_worker()
            stream = self._streams.pop()
            try:
                return await self._score(worker, stream, request)
            finally:
                self._streams.append(stream)

    async def _score(self, worker: _Worker, stream: int, request: ScoreRequest) -> ScoresFrame | ErrorFrame:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(SCORE_LIMIT_S):
                try:
                    await self._send(worker, stream, encode(request))
                    payload = await self._read(worker, stream)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._crashed(worker, "its pipes broke while scoring")
                except WireError as exc:
                    await self._crashed(worker, f"it sent garbage ({exc})")
                if payload is None:
                    await self._crashed(worker, "its output ended while scoring")
                try:
                    return decode_scores(payload)
                except MalformedMessage:
                    pass  # an error frame, or garbage
                try:
                    reply = decode_reply(payload)
                except MalformedMessage as exc:
                    await self._crashed(worker, f"it sent garbage while scoring ({exc})")
                if isinstance(reply, ErrorFrame):
                    return reply
                await self._crashed(worker, f"it answered a score request with {reply.kind}")
            await self._crashed(worker, f"it did not score within {SCORE_LIMIT_S:g} s")

    # -- internals -------------------------------------------------------------------

    async def _send(self, worker: _Worker, stream: int, payload: bytes) -> None:
        tag = bytes((stream,)) if self._slots > 1 else b""
        async with worker.sending:
            await worker.stdin.send_all(encode_frame(tag + payload))

    async def _read(self, worker: _Worker, stream: int) -> bytes | None:
        """The stream's next frame from the worker; None when its output has ended."""
        if self._slots == 1:
            return await worker.frames.read_frame()
        inbox = worker.inbox[stream]
        while not inbox:
            async with worker.reading:
                if inbox:
                    break
                payload = await worker.frames.read_frame()
                if payload is None:
                    return None
                if not payload:
                    raise MalformedMessage("the worker sent a frame without its stream byte")
                worker.inbox[payload[0]].append(payload[1:])
        return inbox.popleft()

    async def _ready_worker(self) -> _Worker:
        async with self._starting:
            return await self._started_worker()

    async def _started_worker(self) -> _Worker:
        if self._closed:
            raise EngineUnavailable("the engine has been closed")
        if self.failed is not None:
            raise EngineUnavailable(self.failed)
        if self._worker is None:
            await trio.sleep_until(self._respawn_at)
            await self._spawn()
        worker = self._worker
        assert worker is not None
        if worker.ready is None:
            await self._wait_ready(worker)
        return worker

    async def _spawn(self) -> None:
        if self._preflight is not None:
            try:
                await trio.to_thread.run_sync(self._preflight, self.model_path)
            except ModelError as exc:
                self.failed = f"the engine will not load {self.model_path.name}: {exc}"
                logger.error("%s", self.failed)
                raise
        if self._started:
            self.restarts += 1
        self._started = True
        if self._log_path is not None:
            _rotate(self._log_path)
        log: IO[bytes] = (
            open(self._log_path, "a+b")  # noqa: ASYNC230 — a local file, once per worker start; owned and closed by the _Worker
            if self._log_path is not None
            else tempfile.TemporaryFile(prefix="dinet-worker-")
        )
        process = await trio.lowlevel.open_process(
            await self._command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.fileno(),
            env=launcher_env(),
            start_new_session=True,  # a ^C at the node's terminal is the node's to handle
        )
        self._worker = _Worker(process, log)
        logger.info("engine worker %d spawned for %s", process.pid, self.model_path.name)

    async def _command(self) -> list[str]:
        argv = list(self._argv)
        readable = {self.model_path, self._weights}
        if self._score_cache is not None and self._score_model is None:
            self._score_model = await self._make_scoring_copy(self._score_cache)
        if self._score_model is not None:
            argv += ["--score-model", str(self._score_model)]
            readable.add(self._score_model)
        if not self._sandboxed:
            return argv
        return sandboxed(
            argv, readable=sorted(readable), protect=[self.model_path], memory_mb=self._memory_mb
        )

    async def _make_scoring_copy(self, cache_dir: Path) -> Path | None:
        """The BF16 copy of the weights verification scores with, made outside the sandbox
        (a sandboxed worker cannot write it); None, and scoring on the weights, if that fails."""
        command = [sys.executable, "-m", "dinet.engine.llama._score", str(self._weights), str(cache_dir),
                   str(self._threads)]  # fmt: skip
        try:
            with trio.fail_after(_SCORING_COPY_LIMIT_S):
                done = await trio.run_process(command, capture_stdout=True, capture_stderr=True)
        except (OSError, subprocess.CalledProcessError, trio.TooSlowError) as exc:
            logger.warning("no BF16 scoring copy, verification scores with the served weights: %s", exc)
            self._score_cache = None
            return None
        return Path(done.stdout.decode().strip().splitlines()[-1])

    async def _wait_ready(self, worker: _Worker) -> None:
        with trio.move_on_after(self._ready_timeout) as scope:
            try:
                payload = await worker.frames.read_frame()
                ready = WorkerReady.model_validate_json(payload) if payload else None
            except (WireError, ValueError) as exc:
                logger.warning("engine worker sent a bad ready frame: %s", exc)
                ready = None
        if ready is not None:
            worker.ready = ready
            self._info = ready.model
            self.sandbox_status = ready.sandbox or UNSANDBOXED
            warn_once(self.sandbox_status)
            logger.info("engine worker %d ready: %s", ready.pid, ready.model.model_id)
            return
        code = await self._discard(worker)
        if scope.cancelled_caught:
            why = f"it was not ready after {self._ready_timeout:.0f} s"
        else:
            why = f"it exited ({_describe(code)}) before it was ready"
        if self._memory_mb is not None:  # C libraries that run out of it say so in their own words
            why += f", under a memory limit of {self._memory_mb} MB"
        tail = worker.log_tail
        message = f"the engine worker for {self.model_path.name} could not start: {why}" + (
            f"; its log ends with: {tail[-500:]}" if tail else ""
        )
        if self._sandboxed:
            message += " (if the sandbox is to blame, --no-sandbox turns it off)"
        if code == EXIT_LOAD_FAILED:  # llama.cpp refused the file (or the memory limit): final
            self.failed = message
            logger.error("engine for %s: %s", self.model_path.name, message)
        else:
            self._count_failure(message)
        raise EngineUnavailable(self.failed or message)

    def _count_failure(self, message: str) -> None:
        """One more failure in a row: back off before the next spawn, or give up."""
        self._failures += 1
        if self._failures > self._max_restarts:
            self.failed = f"gave up after {self._failures} failures in a row; the last: {message}"
            logger.error("engine for %s: %s", self.model_path.name, self.failed)
            return
        delay = 0.0 if self._failures == 1 else self._backoff_s * 2 ** (self._failures - 2)
        self._respawn_at = trio.current_time() + min(delay, _MAX_BACKOFF_S)
        logger.warning("engine for %s failed (%d in a row), next try in %.1f s: %s",
                       self.model_path.name, self._failures, delay, message)  # fmt: skip

    async def _next_reply(self, worker: _Worker, stream: int) -> Reply:
        try:
            payload = await self._read(worker, stream)
            if payload is None:
                await self._crashed(worker, "its output ended")
            reply = decode_reply(payload)
            if isinstance(reply, QueuedFrame):  # a node's frame, never a worker's
                raise MalformedMessage("the worker sent a queued frame")
            return reply
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self._crashed(worker, "its output broke")
        except WireError as exc:
            await self._crashed(worker, f"it sent garbage ({exc})")

    async def _crashed(self, worker: _Worker, what: str) -> NoReturn:
        if worker.crash is not None:  # another of its streams found it first: counted once
            raise EngineCrashed(worker.crash)
        worker.crash = f"engine worker {worker.process.pid} died mid-request: {what}"
        code = await self._discard(worker)
        if self._closed:
            raise EngineUnavailable("the engine was closed during the request")
        message = worker.crash = f"{worker.crash}, {_describe(code)}"
        self._count_failure(message)
        if self.failed is None and self._failures == 1 and self._worker is None:
            try:
                await self._spawn()  # loads while the caller fails over
            except ModelError:
                pass  # the file went bad: `failed` says so, and the next request hears it
        raise EngineCrashed(message)

    async def _discard(self, worker: _Worker) -> int:
        """Kill a worker that failed, reap it, forget it."""
        with trio.CancelScope(shield=True):
            if worker.process.returncode is None:
                with trio.move_on_after(_EXIT_GRACE_S):
                    await worker.process.wait()  # it may be exiting on its own
            worker.process.kill()
            code = await worker.process.wait()
            await worker.close_pipes()
        if self._worker is worker:
            self._worker = None
        return code

    async def _abandon(self, worker: _Worker, stream: int) -> None:
        """The caller left mid-stream: cancel the request and skip its remaining frames."""
        with trio.CancelScope(shield=True):
            with trio.move_on_after(_CANCEL_GRACE_S):
                try:
                    await self._send(worker, stream, CANCEL_PAYLOAD)
                    skipped = 0
                    while (payload := await self._read(worker, stream)) is not None:
                        if not isinstance(decode_reply(payload), TokenFrame):
                            logger.debug(
                                "abandoned request on worker %d ended after %d more frames",
                                worker.process.pid,
                                skipped,
                            )
                            return
                        skipped += 1
                except (trio.BrokenResourceError, trio.ClosedResourceError, WireError):
                    pass  # the worker is unusable: fall through to discarding it
            logger.warning("engine worker %d did not end an abandoned request", worker.process.pid)
            worker.crash = f"engine worker {worker.process.pid} did not end an abandoned request"
            await self._discard(worker)
            if not self._closed and self.failed is None and self._worker is None:
                try:
                    await self._spawn()
                except ModelError:
                    pass  # `failed` says why; the next request hears it


def _rotate(log_path: Path) -> None:
    try:
        if log_path.stat().st_size > _LOG_ROTATE_BYTES:
            log_path.replace(log_path.with_name(log_path.name + ".1"))
    except FileNotFoundError:
        pass


def _describe(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"
