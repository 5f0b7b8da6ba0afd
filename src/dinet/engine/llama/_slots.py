"""Continuous batching: several requests decode together in one llama.cpp context.

A worker started with `--slots N` (N > 1; the node's `--max-concurrent`) serves up to
N streams at once. One llama.cpp context holds N sequences, each with a context of
its own; every step evaluates, in one `llama_decode`, the next token of every
running request and the prompt (or a chunk of it) of any that just arrived. A new
request joins between two steps and a finished one leaves without stalling the
others. Each request still runs the shared generation loop (`dinet.engine._generate`),
driven step by step, with its own sampler draws, grammar and cancellation.

Frames carry a stream byte both ways (`worker_protocol`). A sequence keeps its
last prompt when its request ends, and a new request goes to the free sequence
whose prompt it begins with, so a chat's next turn evaluates only what is new;
as in the one-request worker (`_prefix_cache`), only a prompt's tokens are reused,
never an answer's, and at least two are evaluated again.

llama.cpp's numbers for a position depend in the last bits on what else is in its
batch, so a batched answer may differ from the one-request one after a near tie:
`tests/engine/llama/test_slots.py` counts how often; verification is unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import llama_cpp.llama_cpp as llama_c
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ValidationError

from dinet.engine._generate import BadRequest, Constraint, Evaluate, generation
from dinet.engine.llama._generator import Generator as LlamaGenerator
from dinet.engine.llama._prefix_cache import MIN_SAVED_TOKENS, common_prefix
from dinet.engine.worker_protocol import CANCEL_PAYLOAD, SCORE_PREFIX, refusal
from dinet.errors import MalformedMessage
from dinet.wire.messages import GenerationParams
from dinet.wire.verify import ScoreRequest

logger = logging.getLogger(__name__)

_NO_TOKENS = np.empty(0, dtype=np.int64)

StreamEmit = Callable[[int, BaseModel], None]


class SlotContext:
    """One llama.cpp context of `slots` sequences of `n_ctx` positions each."""

    def __init__(self, generator: LlamaGenerator, slots: int) -> None:
        llm = generator.llm
        params = llama_c.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx = generator.n_ctx * slots
        params.n_seq_max = slots
        params.kv_unified = False  # cells of its own per sequence: none can crowd another out
        self.n_ctx = generator.n_ctx
        self.n_vocab = generator.n_vocab
        self.n_batch = int(params.n_batch)
        self._ctx = llama_c.llama_init_from_model(llm._model.model, params)
        if not self._ctx:
            raise RuntimeError(f"llama.cpp could not make a context of {slots} sequences")
        self._memory = llama_c.llama_get_memory(self._ctx)
        self._batch = llama_c.llama_batch_init(self.n_batch, 0, 1)
        self.positions = [0] * slots  # tokens in each sequence's KV cache
        self.prompts = [_NO_TOKENS] * slots  # each sequence's last prompt, reusable

    def close(self) -> None:
        llama_c.llama_batch_free(self._batch)
        llama_c.llama_free(self._ctx)

    def place(self, seq: int, prompt: list[int]) -> list[int]:
        """Start `seq` on a new prompt; returns the tokens still to evaluate."""
        kept = common_prefix(self.prompts[seq], prompt)
        kept = min(kept, len(prompt) - 2, len(self.prompts[seq]))
        if kept < MIN_SAVED_TOKENS:
            kept = 0
        llama_c.llama_memory_seq_rm(self._memory, seq, kept, -1)
        self.positions[seq] = kept
        self.prompts[seq] = np.asarray(prompt, dtype=np.int64)
        return prompt[kept:]

    def best_free(self, free: set[int], prompt: list[int]) -> int:
        """The free sequence holding the longest beginning of `prompt` (ties: the lowest)."""
        return max(sorted(free), key=lambda seq: common_prefix(self.prompts[seq], prompt))

    def decode(self, pending: dict[int, list[int]]) -> dict[int, int]:
        """Evaluate up to a batch of the pending tokens, per sequence, in one llama_decode.

        Single tokens (running answers) go first, then prompts in order, cut where the
        batch is full. Evaluated tokens are removed from `pending`; returns, for each
        sequence whose pending tokens are all evaluated, the batch row of its logits.
        """
        batch = self._batch
        n = 0
        done: dict[int, int] = {}
        for seq in sorted(pending, key=lambda s: len(pending[s])):
            tokens = pending[seq]
            take = min(len(tokens), self.n_batch - n)
            if take <= 0:
                break
            position = self.positions[seq]
            for i in range(take):
                batch.token[n + i] = tokens[i]
                batch.pos[n + i] = position + i
                batch.n_seq_id[n + i] = 1
                batch.seq_id[n + i][0] = seq
                batch.logits[n + i] = False
            n += take
            self.positions[seq] += take
            del tokens[:take]
            if not tokens:
                batch.logits[n - 1] = True
                done[seq] = n - 1
        batch.n_tokens = n
        result = llama_c.llama_decode(self._ctx, batch)
        if result != 0:
            raise RuntimeError(f"llama_decode returned {result} for a batch of {n} tokens")
        return done

    def logits(self, row: int) -> npt.NDArray[np.float32]:
        """A view (no copy) of the logits of batch row `row`, valid until the next decode."""
        pointer = llama_c.llama_get_logits_ith(self._ctx, row)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))


class _SequenceModel:
    """One sequence of a `SlotContext`, as the generation loop's `Model`."""

    def __init__(self, generator: LlamaGenerator, context: SlotContext) -> None:
        self._generator = generator
        self._context = context
        self.n_vocab = generator.n_vocab
        self.n_ctx = context.n_ctx
        self.seq = -1  # chosen once the prompt is known
        self.row = -1  # where its logits are in the last batch

    def prompt_tokens(self, params: GenerationParams) -> tuple[list[int], tuple[str, ...]]:
        return self._generator.prompt_tokens(params)

    def start(self, prompt: list[int]) -> None:
        raise AssertionError("a batched sequence is evaluated by its SlotContext")

    def step(self, token: int) -> None:
        raise AssertionError("a batched sequence is evaluated by its SlotContext")

    def n_tokens(self) -> int:
        return self._context.positions[self.seq]

    def last_logits(self) -> npt.NDArray[np.float32]:
        return self._context.logits(self.row)

    def piece(self, token: int) -> bytes:
        return self._generator.piece(token)

    def is_eog(self, token: int) -> bool:
        return self._generator.is_eog(token)

    def constraint(self, grammar: str) -> Constraint:
        return self._generator.constraint(grammar)


@dataclass
class _Stream:
    model: _SequenceModel
    steps: Generator[Evaluate, None, None] = field(init=False)
    pending: list[int] = field(default_factory=list)  # to evaluate before its loop goes on
    cancelled: bool = False


class StreamServer:
    """Serves the frames of up to `slots` streams at once on one `Generator`'s model."""

    def __init__(self, generator: LlamaGenerator, slots: int, emit: StreamEmit) -> None:
        self._generator = generator
        self._context = SlotContext(generator, slots)
        self._emit = emit
        self._streams: dict[int, _Stream] = {}
        self._free = set(range(slots))

    def close(self) -> None:
        for stream in self._streams.values():
            stream.steps.close()
        self._context.close()

    @property
    def running(self) -> bool:
        return bool(self._streams)

    def take(self, payload: bytes) -> None:
        """One frame from the node: a request, a score request or a cancel, for its stream."""
        if not payload:
            raise MalformedMessage("an empty frame has no stream byte")
        sid, body = payload[0], payload[1:]
        if body == CANCEL_PAYLOAD:
            if sid in self._streams:  # else its request had already ended
                self._streams[sid].cancelled = True
            return
        if sid in self._streams:
            raise MalformedMessage(f"a second request on stream {sid} before its first ended")
        try:
            if body.startswith(SCORE_PREFIX):
                self._emit(sid, self._generator.score(ScoreRequest.model_validate_json(body)))
                return
            self._begin(sid, GenerationParams.model_validate_json(body))
        except (ValidationError, BadRequest) as exc:
            self._emit(sid, refusal(exc))

    def _begin(self, sid: int, params: GenerationParams) -> None:
        if not self._free:
            raise MalformedMessage(f"stream {sid} asked for a sequence while all are in use")
        generator = self._generator
        stream = _Stream(_SequenceModel(generator, self._context))
        stream.steps = generation(
            stream.model,
            generator.sampler,
            generator.model_id,
            params,
            time.perf_counter(),
            lambda message: self._emit(sid, message),
            lambda: stream.cancelled,
            lie=generator.lie,
            random_token=generator.random_token,
        )
        try:
            prompt = next(stream.steps)
        except BaseException:
            stream.steps.close()
            raise
        stream.model.seq = self._context.best_free(self._free, prompt)
        stream.pending = self._context.place(stream.model.seq, prompt)
        self._free.discard(stream.model.seq)
        self._streams[sid] = stream
        logger.info("request on stream %d, sequence %d: %d running, %d of %d prompt tokens reused",
                    sid, stream.model.seq, len(self._streams), len(prompt) - len(stream.pending),
                    len(prompt))  # fmt: skip

    def step(self) -> None:
        """One llama_decode for every running stream, then each reads its logits and goes on."""
        pending = {stream.model.seq: stream.pending for stream in self._streams.values()}
        done = self._context.decode(pending)
        for sid, stream in list(self._streams.items()):
            row = done.get(stream.model.seq)
            if row is None:
                continue  # a long prompt, evaluated over several steps
            stream.model.row = row
            try:
                stream.pending = list(next(stream.steps))
            except StopIteration:
                self._end(sid)
            except BadRequest as exc:
                self._end(sid)
                self._emit(sid, refusal(exc))

    def _end(self, sid: int) -> None:
        stream = self._streams.pop(sid)
        stream.steps.close()
        self._free.add(stream.model.seq)
