"""The llama.cpp worker process: `python -m dinet.engine.llama.worker_process --model PATH --threads N`.

Started by the node's `WorkerEngine` (`worker_client`), in the sandbox; it loads the
model, writes one `WorkerReady`, then serves requests one at a time as the worker
protocol says (`dinet.engine.worker_protocol`).

Only our frames may reach the pipe, so the real stdout is kept on a private fd and
fd 1 is pointed at stderr before llama.cpp loads: anything C code prints goes to the
log. Thread counts and the memory limit are set before llama.cpp is imported, since
OpenMP reads its environment when the library loads.

A worker whose node dies sees the end of stdin (or a broken pipe on its next frame)
and exits. PR_SET_PDEATHSIG is not used: it fires when the spawning *thread* exits,
and trio spawns processes from short-lived worker threads.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import select
import struct
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from pydantic import BaseModel, ValidationError

from dinet.engine.worker_protocol import CANCEL_PAYLOAD, EXIT_LOAD_FAILED, SCORE_PREFIX, refusal
from dinet.errors import FrameTooLarge, MalformedMessage
from dinet.wire.framing import MAX_FRAME, encode_frame
from dinet.wire.messages import GenerationParams, TokenFrame, encode
from dinet.wire.verify import ScoreRequest

if TYPE_CHECKING:
    from dinet.engine._generate import Emit
    from dinet.engine.llama._generator import Generator
    from dinet.engine.worker_protocol import WorkerReady

logger = logging.getLogger("dinet.engine.llama.worker_process")  # __name__ is "__main__"

_HEADER = struct.Struct(">I")
BATCH_INTERVAL_S = 0.04
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dinet.engine.llama.worker_process")
    parser.add_argument("--model", type=Path, required=True, help="GGUF file to load")
    parser.add_argument("--threads", type=int, required=True, help="llama.cpp threads")
    parser.add_argument("--ctx", type=int, default=2048, help="context length in tokens")
    parser.add_argument("--memory-mb", type=int, default=None, help="address-space limit")
    parser.add_argument(
        "--slots", type=int, default=1, help="requests decoded together (>1: frames carry a stream byte)"
    )
    parser.add_argument(
        "--prefix-cache-mb", type=int, default=0, help="earlier prompts' KV state kept to reuse (0: off)"
    )
    parser.add_argument(
        "--extra-bufts",
        choices=("auto", "on", "off"),
        default="auto",
        help="llama.cpp extra buffer types (weight repacking); auto: off on AMX CPUs",
    )
    parser.add_argument("--liar", default=None, help="testing only: random, corrupt:K or wrong-model:PATH")
    parser.add_argument(
        "--score-model",
        type=Path,
        default=None,
        help="the BF16 copy verification scores with (none: score with the model itself)",
    )
    return parser.parse_args(argv)


def _claim_stdout() -> BinaryIO:
    """Our frames go to a private copy of fd 1; fd 1 itself now writes to stderr."""
    frames_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(frames_fd, "wb")


class _StdinFrames:
    """Frames from a raw fd, with a non-blocking check for pending input."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()

    def has_input(self) -> bool:
        return bool(self._buffer) or bool(select.select([self._fd], [], [], 0)[0])

    def _fill(self, size: int) -> bool:
        while len(self._buffer) < size:
            chunk = os.read(self._fd, max(size - len(self._buffer), 65536))
            if not chunk:
                return False
            self._buffer += chunk
        return True

    def read_frame(self) -> bytes | None:
        """The next frame's payload, or None at end of input between frames."""
        if not self._fill(_HEADER.size):
            if self._buffer:
                raise MalformedMessage("stdin ended inside a frame header")
            return None
        (size,) = _HEADER.unpack_from(self._buffer)
        if size > MAX_FRAME:
            raise FrameTooLarge(f"frame of {size} bytes exceeds the cap of {MAX_FRAME}")
        if not self._fill(_HEADER.size + size):
            raise MalformedMessage(f"stdin ended inside a frame of {size} bytes")
        payload = bytes(self._buffer[_HEADER.size : _HEADER.size + size])
        del self._buffer[: _HEADER.size + size]
        return payload


class _BatchingOutput:
    """Frames to the node, a request's first token and every final frame at once,
    the tokens between them in writes at most BATCH_INTERVAL_S apart.

    Each write wakes the node, and each of its writes costs the node and the client
    ~0.5 ms of CPU in py-libp2p: on a small machine that is taken from llama.cpp's
    own threads. Batches of a few tokens still read as a smooth stream.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._pending = bytearray()
        self._written_at = float("-inf")

    def emit(self, message: BaseModel, stream: bytes = b"") -> None:
        self._pending += encode_frame(stream + encode(message))
        now = time.monotonic()
        is_token = isinstance(message, TokenFrame)
        if not is_token or now - self._written_at >= BATCH_INTERVAL_S:
            self._out.write(self._pending)
            self._out.flush()
            self._pending.clear()
            # After a final frame the next request's first token goes out at once.
            self._written_at = now if is_token else float("-inf")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    out = _claim_stdout()
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"worker[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    for name in _THREAD_ENV:
        os.environ[name] = str(args.threads)
    if args.memory_mb is not None:
        limit = args.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    output = _BatchingOutput(out)

    try:
        generator, ready = _load(args)
    except (MemoryError, ImportError, OSError, ValueError, RuntimeError) as exc:
        under = f" under a memory limit of {args.memory_mb} MB" if args.memory_mb else ""
        logger.error("could not load the model%s: %s: %s", under, type(exc).__name__, exc)
        return EXIT_LOAD_FAILED

    try:
        output.emit(ready)
        frames = _StdinFrames(sys.stdin.fileno())
        if args.slots > 1:
            _serve_streams(frames, output, generator, args.slots)
        else:
            _serve(frames, output.emit, generator)
    except BrokenPipeError:
        logger.info("the node closed the pipe; exiting")
    except (FrameTooLarge, MalformedMessage) as exc:
        logger.error("unreadable request stream, exiting: %s", exc)
        return 1
    return 0


def _load(args: argparse.Namespace) -> tuple[Generator, WorkerReady]:
    # Imported only now: llama.cpp must see the thread settings and memory limit.
    from llama_cpp import Llama

    from dinet.engine.llama._generator import Generator
    from dinet.engine.llama._llama_cpp import load_llama, read_model_info
    from dinet.engine.sandbox import current_status
    from dinet.engine.testing.liar import liars_allowed, parse_lie
    from dinet.engine.worker_protocol import WorkerReady

    if not args.model.is_file():
        raise FileNotFoundError(f"no model file at {args.model}")
    lie = None
    if args.liar is not None:
        if not liars_allowed():
            raise ValueError("--liar needs DINET_ALLOW_LIARS=1")
        lie = parse_lie(args.liar)
        logger.warning("THIS WORKER LIES (%s): for tests of verification only", lie)
    weights = lie.model if lie is not None and lie.model is not None else args.model
    extra = {"auto": None, "on": True, "off": False}[args.extra_bufts]
    llm = load_llama(weights, threads=args.threads, n_ctx=args.ctx, extra_bufts=extra)
    info = read_model_info(llm, args.model)  # a wrong-model liar still names the real one
    ready = WorkerReady(
        pid=os.getpid(),
        model=info,
        threads=args.threads,
        extra_bufts=bool(llm.model_params.use_extra_bufts),
        sandbox=current_status(),
    )

    def load_scorer() -> Llama:
        return load_llama(args.score_model, threads=args.threads, n_ctx=args.ctx, extra_bufts=extra)

    scorer = load_scorer if args.score_model is not None else None
    cache_bytes = args.prefix_cache_mb * 1024 * 1024
    return Generator(llm, info.model_id, lie, scorer, prefix_cache_bytes=cache_bytes), ready


def _serve(frames: _StdinFrames, emit: Emit, generator: Generator) -> None:
    from dinet.engine._generate import BadRequest

    while (payload := frames.read_frame()) is not None:
        received_at = time.perf_counter()
        if payload == CANCEL_PAYLOAD:
            continue  # the request it meant to end had already ended
        try:
            if payload.startswith(SCORE_PREFIX):
                emit(generator.score(ScoreRequest.model_validate_json(payload)))
                continue
            params = GenerationParams.model_validate_json(payload)
            generator.run(params, received_at, emit, frames.has_input)
        except (ValidationError, BadRequest) as exc:
            emit(refusal(exc))
    logger.info("stdin closed; exiting")


def _serve_streams(frames: _StdinFrames, output: _BatchingOutput, generator: Generator, slots: int) -> None:
    """Up to `slots` requests at once, decoded together (`_slots`); every frame carries its stream byte."""
    from dinet.engine.llama._slots import StreamServer

    server = StreamServer(generator, slots, lambda sid, message: output.emit(message, bytes((sid,))))
    try:
        while True:
            while not server.running or frames.has_input():
                payload = frames.read_frame()
                if payload is None:
                    logger.info("stdin closed; exiting")
                    return
                server.take(payload)
            server.step()
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
