"""The embedding worker: `python -m dinet.engine.llama.embed_process --model PATH --threads N`.

A process of its own rather than a mode of `worker_process`: llama.cpp needs a context
made for embeddings (no causal mask, a pooled output, the whole input in one batch), and
the generating worker's batched slots, sampler and scorer have nothing to do here. It
shares the rest: the sandbox, the frame pipes, `WorkerReady`, and its owner
(`EmbedEngine`, a `WorkerEngine` that sends `EmbedTexts` instead of generation requests).

Each request is answered with one `EmbeddingsFrame`: per input, the mean of the last
hidden states over its tokens (cut to the model's window), normalised to length 1, as
sentence-transformers computes it for all-MiniLM-L6-v2.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from dinet.engine.llama.worker_process import _THREAD_ENV, _claim_stdout, _StdinFrames
from dinet.engine.worker_protocol import EXIT_LOAD_FAILED
from dinet.errors import FrameTooLarge, MalformedMessage
from dinet.wire.embed import EmbeddingsFrame, decode_embed_texts
from dinet.wire.framing import encode_frame
from dinet.wire.messages import ErrorFrame, encode

if TYPE_CHECKING:
    from llama_cpp import Llama
    from pydantic import BaseModel

    from dinet.engine.worker_protocol import WorkerReady

logger = logging.getLogger("dinet.engine.llama.embed_process")  # __name__ is "__main__"

WINDOW = 256  # tokens read of one input: all-MiniLM-L6-v2's max_seq_length, as sentence-transformers cuts


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dinet.engine.llama.embed_process")
    parser.add_argument("--model", type=Path, required=True, help="embedding GGUF to load")
    parser.add_argument("--threads", type=int, required=True, help="llama.cpp threads")
    parser.add_argument("--ctx", type=int, default=WINDOW, help="tokens read of one input")
    parser.add_argument("--memory-mb", type=int, default=None, help="address-space limit")
    parser.add_argument("--extra-bufts", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--liar", choices=("random",), default=None, help="testing only: random vectors")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    out = _claim_stdout()
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"embed-worker[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    for name in _THREAD_ENV:
        os.environ[name] = str(args.threads)
    if args.memory_mb is not None:
        limit = args.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        llm, ready = _load(args)
    except (MemoryError, ImportError, OSError, ValueError, RuntimeError) as exc:
        logger.error("could not load the embedding model: %s: %s", type(exc).__name__, exc)
        return EXIT_LOAD_FAILED
    try:
        _emit(out, ready)
        _serve(_StdinFrames(sys.stdin.fileno()), out, llm, ready.embedding_dims or 1, args.liar)
    except BrokenPipeError:
        logger.info("the node closed the pipe; exiting")
    except (FrameTooLarge, MalformedMessage) as exc:
        logger.error("unreadable request stream, exiting: %s", exc)
        return 1
    return 0


def _emit(out: BinaryIO, message: BaseModel) -> None:
    out.write(encode_frame(encode(message)))
    out.flush()


def _load(args: argparse.Namespace) -> tuple[Llama, WorkerReady]:
    # Imported only now: llama.cpp must see the thread settings and memory limit.
    import llama_cpp

    from dinet.engine.llama._llama_cpp import load_llama, read_model_info
    from dinet.engine.sandbox import current_status
    from dinet.engine.testing.liar import liars_allowed
    from dinet.engine.worker_protocol import WorkerReady

    if not args.model.is_file():
        raise FileNotFoundError(f"no model file at {args.model}")
    if args.liar is not None:
        if not liars_allowed():
            raise ValueError("--liar needs DINET_ALLOW_LIARS=1")
        logger.warning("THIS EMBEDDING WORKER LIES (%s): for tests of verification only", args.liar)
    extra = {"auto": None, "on": True, "off": False}[args.extra_bufts]
    llm = load_llama(
        args.model,
        threads=args.threads,
        n_ctx=args.ctx,
        extra_bufts=extra,
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        n_batch=args.ctx,
        n_ubatch=args.ctx,
    )
    ready = WorkerReady(
        pid=os.getpid(),
        model=read_model_info(llm, args.model),
        threads=args.threads,
        extra_bufts=bool(llm.model_params.use_extra_bufts),
        sandbox=current_status(),
        embedding_dims=llm.n_embd(),
    )
    return llm, ready


def embed(llm: Llama, texts: tuple[str, ...]) -> tuple[np.ndarray, list[int]]:
    """Unit vectors (n, n_embd) and each input's token count, one input at a time.

    Not `Llama.embed`: it cuts a long input's tokens at the window, dropping the closing
    [SEP] that sentence-transformers keeps (the vector then drifts, cosine ~0.997).
    """
    import llama_cpp

    window, n_embd, sep = llm.n_ctx(), llm.n_embd(), llm._model.token_sep()
    rows, counts = [], []
    for text in texts:
        tokens = llm.tokenize(text.encode("utf-8"))
        if len(tokens) > window:
            tail = tokens[-1:] if sep != -1 and tokens[-1] == sep else []
            tokens = tokens[: window - len(tail)] + tail
        llm._batch.reset()
        llm._batch.add_sequence(tokens, 0, True)  # every token an output, as Llama.embed marks them
        llm._ctx.kv_cache_clear()
        llm._ctx.decode(llm._batch)
        pooled = np.array(llama_cpp.llama_get_embeddings_seq(llm._ctx.ctx, 0)[:n_embd], dtype=np.float64)
        rows.append(pooled / max(float(np.linalg.norm(pooled)), 1e-12))
        counts.append(len(tokens))
    return np.asarray(rows, dtype=np.float32), counts  # (n, n_embd)


def _serve(frames: _StdinFrames, out: BinaryIO, llm: Llama, dims: int, liar: str | None) -> None:
    rng = np.random.default_rng()
    while (payload := frames.read_frame()) is not None:
        started = time.perf_counter()
        try:
            request = decode_embed_texts(payload)
        except MalformedMessage as exc:
            _emit(out, ErrorFrame(code="bad_request", message=str(exc)[:1000]))
            continue
        vectors, counts = embed(llm, request.inputs)
        if liar == "random":
            vectors = rng.standard_normal((len(request.inputs), dims)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        elapsed_ms = (time.perf_counter() - started) * 1000
        _emit(out, EmbeddingsFrame.of(vectors, counts, elapsed_ms))
    logger.info("stdin closed; exiting")


if __name__ == "__main__":
    sys.exit(main())
