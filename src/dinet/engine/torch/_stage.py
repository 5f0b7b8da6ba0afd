"""One pipeline stage: a layer-range model plus what its place in the chain needs.

The first stage tokenizes the prompt (its ids go back to the client, which sends them
in as steps); the last stage turns logits into tokens with the same `Sampler` and
`CompletionText` as the whole-model engine, so a chain's frames are those of
`/dinet/infer/1`. Everything here is synchronous and runs off the event loop
(on the node's compute thread for this stage), one step at a time.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import numpy.typing as npt

from dinet.engine._text import CompletionText
from dinet.engine.adjust import Adjuster
from dinet.engine.lookup import PromptLookup
from dinet.engine.sampler import Sampler
from dinet.engine.testing.liar import Lie
from dinet.engine.torch._gguf_file import GGUFFile
from dinet.errors import MalformedMessage, UnsupportedModel
from dinet.wire.messages import GenerationParams, TokenFrame
from dinet.wire.shard import Draft, TensorDType
from dinet.wire.stage_receipt import step_digest

if TYPE_CHECKING:
    import torch

    from dinet.engine.llama.draft import DraftModel
    from dinet.engine.torch.shard import GGUFTokenizer, ShardModel, ShardSession

logger = logging.getLogger(__name__)


class StageRequestError(Exception):
    """A request this stage cannot serve (empty prompt, too long, bad ids); answered as bad_request."""


class Drafter(Protocol):
    """How a first stage guesses the tokens after the ones it holds (prompt lookup, a draft model)."""

    def propose(self, tokens: list[int], room: int) -> list[int]: ...

    def taken(self, drafted: int, accepted: int) -> None: ...


@dataclass(frozen=True)
class Sampled:
    index: int
    token_id: int
    frames: tuple[TokenFrame, ...]
    finish_reason: Literal["stop", "length"] | None


@dataclass(frozen=True)
class StepRecord:
    """One step of a checked session: the rows that went in, as they came (with the
    token ids a first stage guessed after them), and the bytes that came out (hidden
    states as sent on, or the ids of the tokens chosen; none for a prompt chunk the
    last stage only took in)."""

    rows: int
    dtype: TensorDType
    data_in: bytes
    keep: int | None
    draft: tuple[int, ...]
    sample: bool
    out_rows: int
    out_dtype: TensorDType
    data_out: bytes

    @property
    def digests(self) -> tuple[str, str]:
        return step_digest(self.data_in), step_digest(self.data_out)


WIRE_DTYPES: dict[str, TensorDType] = {
    "int32": "i32",
    "float32": "f32",
    "float16": "f16",
}  # numpy name -> wire


def quiet_threads(threads: int) -> None:
    """Thread settings torch's OpenMP (libgomp) reads when it loads.

    Between steps a stage waits for its neighbours, and libgomp's idle threads spin
    before they sleep: by default 300,000 rounds, long enough to steal a core from the
    stage computing next. 10,000 rounds still bridge the short gaps between the
    parallel regions of one step. 3-stage chain, 2 threads per stage: 27 tok/s at the
    default, 42 at 10,000 (3,000: 39; 1,000: 37). Not OMP_WAIT_POLICY=PASSIVE: its
    threads sleep after every region, and waking them ~200 times a step made a step
    31 ms instead of 11 ms.

    Each thread of the team is bound to a core of its own (OMP_PROC_BIND). Unbound, the
    scheduler of this machine (a VM whose kernel runs with sched_vcpu_pack) at times
    ran a step's two threads on one core while the other stayed idle, and the step
    took 10-40 ms instead of 3 (seen with `perf sched`). 3-stage chain, 10
    alternated answers each: 55.6 tok/s bound against 51.9 unbound (another run of 8:
    51.1 against 48.3). Settings the user made are kept.
    """
    if "torch" in sys.modules:
        logger.warning("torch was loaded before the stage's thread settings: they may not apply")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
    os.environ.setdefault("OMP_PROC_BIND", "true")
    os.environ.setdefault("OMP_PLACES", "cores")


# A stage's compute workers (torch's OpenMP threads, and OpenBLAS's) run this many nice
# levels below the rest of its node. They spin on after a step (GOMP_SPINCOUNT: with
# steps 12 ms apart, a worker used 3.7-3.9 ms of a core per 4.2-4.5 ms step), just when
# the chain's next hop wakes event loops and compute threads on the same cores;
# lowered, they let those threads run first. 3-stage chain on 2 cores, 10 alternated
# answers each: token period mean 20.5 ms at the node's priority, 19.3 at +10, 19.0 at
# +5; in another run 19.5, against 18.8 at +19 and 18.1 at +10. Other programs on the
# machine now come first as well: they slow a stage more, and a stage slows them less.
WORKER_NICE_STEP = 10


def _thread_ids() -> set[int]:
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except OSError:  # not Linux: this process's threads cannot be told apart
        return set()


def _lower_priority(thread_ids: set[int]) -> None:
    for tid in thread_ids:
        try:
            nice = os.getpriority(os.PRIO_PROCESS, tid)  # Linux: PRIO_PROCESS takes a thread id
            os.setpriority(os.PRIO_PROCESS, tid, min(19, nice + WORKER_NICE_STEP))
        except OSError:
            pass  # the thread has ended


class Stage:
    """A loaded layer range and, if it is first or last, the model's tokenizer."""

    def __init__(
        self,
        model: ShardModel,
        tokenizer: GGUFTokenizer | None,
        lie: Lie | None = None,
        draft_model: DraftModel | None = None,
    ) -> None:
        self.model = model
        self._tokenizer = tokenizer
        self._pieces: dict[int, bytes] = {}
        self.lie = lie  # testing only: how this stage falsifies its blocks (dinet.engine.testing.liar)
        self.draft_model = draft_model  # a first stage's, for sessions opened with draft "model"

    @classmethod
    def load(
        cls,
        path: Path,
        start: int,
        stop: int,
        *,
        threads: int = 1,
        lie: Lie | None = None,
        draft: Path | None = None,
    ) -> Stage:
        """Load on the thread that will run every step: torch's OpenMP workers start now,
        and are set WORKER_NICE_STEP below it (threads started meanwhile by others too).
        `draft`: a whole model of the same vocabulary a first stage guesses tokens with
        (UnsupportedModel if its vocabulary differs; other stages ignore it)."""
        quiet_threads(threads)
        import torch

        from dinet.engine.torch.shard import GGUFTokenizer, LayerSpan, ShardModel

        before = _thread_ids()
        model = ShardModel.load(path, LayerSpan(start, stop), threads=threads)
        torch.ones(1 << 20).add_(1)  # big enough to be split: the workers are surely started
        tokenizer = GGUFTokenizer.from_gguf(path) if model.is_first or model.is_last else None
        draft_model = None
        if draft is not None and model.is_first:
            from dinet.engine.llama.draft import DraftModel

            check_same_vocabulary(path, draft)
            draft_model = DraftModel.load(draft, n_ctx=model.n_ctx, threads=threads)
        _lower_priority(_thread_ids() - before - {threading.get_native_id()})
        return cls(model, tokenizer, lie, draft_model)

    @property
    def tokenizer(self) -> GGUFTokenizer:
        assert self._tokenizer is not None, "only the first and last stages hold a tokenizer"
        return self._tokenizer

    def open(
        self,
        params: GenerationParams,
        dtype: Literal["f32", "f16"] = "f32",
        draft: Draft = "none",
        *,
        checked: bool = False,
    ) -> StageSession:
        """A session; `checked`, it keeps every step for a receipt or an audit."""
        return StageSession(self, params, dtype, draft=draft, log=[] if checked else None)

    def piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.tokenizer.piece(token)
        return piece


@dataclass
class StageSession:
    """One session's KV cache on this stage, and (on the last stage) its completion state."""

    stage: Stage
    params: GenerationParams
    dtype: Literal["f32", "f16"] = "f32"  # of the hidden states this stage sends on
    prompt_ids: tuple[int, ...] = ()
    steps: int = 0
    draft: Draft = "none"  # how the first stage guesses tokens (speculative steps)
    draft_out: tuple[int, ...] = ()  # the guessed ids among the last step's rows, to pass on
    held: int = 0  # positions of the cache that hold after the last step (guesses refused: not)
    log: list[StepRecord] | None = None  # a checked session's steps
    _kv: ShardSession = field(init=False)
    _logged: int = field(init=False, default=0)  # bytes the log holds
    _tokens: list[int] = field(init=False, default_factory=list)  # first stage: the ids in the cache
    _drafter: Drafter | None = field(init=False, default=None)
    _drafted: int = field(init=False, default=0)  # guesses in the last step, and after how many positions
    _drafted_after: int = field(init=False, default=0)
    _text: CompletionText | None = field(init=False, default=None)
    _sampler: Sampler | None = field(init=False, default=None)
    _adjuster: Adjuster | None = field(init=False, default=None)
    _index: int = field(init=False, default=0)
    _finished: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        model = self.stage.model
        if self.params.prefix_tokens:
            raise StageRequestError("a chain replays its own steps: prefix_tokens are not taken")
        if self.params.grammar is not None:
            raise StageRequestError("a chain does not keep to a grammar yet: ask a whole-model peer")
        if self.params.logprobs is not None:
            raise StageRequestError("a chain does not report log-probabilities yet: ask a whole-model peer")
        stops: tuple[str, ...] = ()
        if model.is_first or model.is_last:
            ids, stops = self._prompt()
            if not ids:
                raise StageRequestError("the prompt is empty")
            if len(ids) >= model.n_ctx:
                raise StageRequestError(
                    f"a prompt of {len(ids)} tokens does not fit the context of {model.n_ctx}"
                )
            if model.is_first:
                self.prompt_ids = tuple(ids)
                self._drafter = self._new_drafter()
        if model.is_last:
            self._text = CompletionText(self.params.stop + stops)
            self._sampler = Sampler(model.n_vocab)
            if Adjuster.needed(self.params):
                if any(token >= model.n_vocab for token, _ in self.params.logit_bias):
                    raise StageRequestError(f"a logit_bias token id is not below {model.n_vocab}")
                self._adjuster = Adjuster(self.params, ids)
        self._kv = model.new_session()

    def _new_drafter(self) -> Drafter | None:
        if self.draft == "lookup":
            return PromptLookup()
        if self.draft == "model":
            if self.stage.draft_model is None:
                raise StageRequestError("this stage has no draft model (`din node --draft-model`)")
            from dinet.engine.llama.draft import ModelDraft

            return ModelDraft(self.stage.draft_model)
        return None

    def _prompt(self) -> tuple[list[int], tuple[str, ...]]:
        tokenizer = self.stage.tokenizer
        if self.params.messages is not None:
            ids, stops = tokenizer.chat_prompt(self.params.messages)
            return list(ids), tuple(stops)
        return list(tokenizer.raw_prompt(self.params.prompt or "")), ()

    def digests(self) -> list[tuple[str, str]] | None:
        """A checked session's (input, output) digest per step, what its receipt signs."""
        return None if self.log is None else [r.digests for r in self.log]

    @property
    def nbytes(self) -> int:
        return int(self._kv.nbytes()) + self._logged

    def check_input(self, x: npt.NDArray[np.generic]) -> None:
        model = self.stage.model
        if model.is_first:
            if x.dtype.kind != "i" or x.shape[1] != 1:
                raise MalformedMessage("the first stage takes token ids (i32, one per row)")
            if x.size and not (0 <= int(x.min()) and int(x.max()) < model.n_vocab):
                raise StageRequestError(f"a token id outside the vocabulary ({model.n_vocab})")
        elif x.dtype.kind != "f" or x.shape[1] != model.n_embd:
            raise MalformedMessage(f"this stage takes hidden states of width {model.n_embd}")
        if self._kv.length + x.shape[0] > model.n_ctx:
            raise StageRequestError(f"the session would pass the context of {model.n_ctx} tokens")
        if self._finished:
            raise StageRequestError("the completion has already ended")

    def forward(
        self,
        x: npt.NDArray[np.generic],
        sample: bool = True,
        *,
        keep: int | None = None,
        draft: tuple[int, ...] = (),
    ) -> npt.NDArray[np.floating] | tuple[Sampled, ...] | None:
        """One step: (T, 1) ids or (T, n_embd) hidden in; (T, n_embd) hidden states out
        (of the session's dtype), or (last stage) the tokens chosen, or None when not
        asked to choose one.

        `keep`: the positions of the cache that hold before this step (a speculative
        step's refused rows are dropped). `draft`: the guessed ids among the rows, after
        the first; the last stage checks them. A first stage that drafts follows a
        token sent round (a step with `keep`) with its own guesses."""
        import torch

        model = self.stage.model
        if keep is not None:
            self._rewind(keep)
            if model.is_first and self._drafter is not None:
                x, draft = self._with_guesses(x)
        if draft and len(draft) != x.shape[0] - 1:
            raise StageRequestError(f"a step of {x.shape[0]} rows cannot carry {len(draft)} guessed tokens")
        self.check_input(x)
        lie, step = self.stage.lie, self.steps
        if model.is_first:
            self._tokens.extend(int(t) for t in x[:, 0])
            inputs = torch.from_numpy(np.ascontiguousarray(x[:, 0], dtype=np.int64))  # (T,)
        else:
            inputs = torch.from_numpy(np.array(x, dtype=np.float32))  # (T, n_embd), a writable copy
        self.draft_out = draft
        out = self._kv.forward(inputs, speculative=bool(draft))
        self.steps += 1
        self.held = self._kv.length
        result: npt.NDArray[np.floating] | tuple[Sampled, ...] | None
        if not model.is_last:
            hidden = out.numpy() if lie is None else lie.falsified(out.numpy(), step)
            result = hidden if self.dtype == "f32" else hidden.astype(np.float16)
        elif not sample:
            result = None
        elif not draft:
            result = (self._sample(out.numpy(), self._kv.length),)
        else:
            result = self._check_guesses(out, draft)
        if self.log is not None:
            record = _record(x, keep, draft, sample, result)
            self.log.append(record)
            self._logged += len(record.data_in) + len(record.data_out)
        return result

    def _rewind(self, keep: int) -> None:
        if keep > self._kv.length:
            raise StageRequestError(f"keep {keep} is past the {self._kv.length} positions of the session")
        if self._drafter is not None and self._drafted:
            taken = keep - self._drafted_after - 1  # of the guesses in the last step
            self._drafter.taken(self._drafted, max(0, taken))
        self._kv.rewind(keep)
        del self._tokens[keep:]

    def _with_guesses(self, x: npt.NDArray[np.generic]) -> tuple[npt.NDArray[np.generic], tuple[int, ...]]:
        """The token sent round, followed by the tokens the drafter guesses after it."""
        assert self._drafter is not None
        if x.shape[0] != 1 or x.dtype.kind != "i":
            raise StageRequestError("a token sent round is one row of one token id")
        room = self.stage.model.n_ctx - self._kv.length - 1
        guesses = self._drafter.propose([*self._tokens, int(x[0, 0])], room)
        self._drafted, self._drafted_after = len(guesses), self._kv.length
        if not guesses:
            return x, ()
        rows = np.concatenate([x, np.asarray(guesses, dtype=x.dtype).reshape(-1, 1)])
        return rows, tuple(guesses)

    def _check_guesses(self, rows: torch.Tensor, draft: tuple[int, ...]) -> tuple[Sampled, ...]:
        """Choose a token from each row's logits while the row before was guessed right:
        the run of guesses taken, then the token after them (the first that differs).
        `rows`: the step's last hidden states, normalized (T, n_embd)."""
        first_position = self._kv.length - len(rows) + 1  # positions held once row 0 is in
        chosen: list[Sampled] = []
        for r in range(len(rows)):
            logits = self.stage.model.logits_of(rows[r : r + 1]).numpy()
            sampled = self._sample(logits, first_position + r)
            chosen.append(sampled)
            if sampled.finish_reason is not None or r >= len(draft) or sampled.token_id != draft[r]:
                break
        self.held = first_position + len(chosen) - 1  # row 0 and the guesses taken
        return tuple(chosen)

    def _other_token(self, token: int) -> int:
        """The next id after `token` that does not end the text."""
        n_vocab, tokenizer = self.stage.model.n_vocab, self.stage.tokenizer
        ids = (t % n_vocab for t in range(token + 1, token + n_vocab))
        return next(t for t in ids if not tokenizer.is_eog(t))

    def _sample(self, logits: npt.NDArray[np.float32], positions: int) -> Sampled:
        assert self._text is not None and self._sampler is not None
        params, index = self.params, self._index
        adjusted = logits if self._adjuster is None else self._adjuster.logits(logits)
        token = self._sampler.choose(
            adjusted, index, temperature=params.temperature, top_p=params.top_p, seed=params.seed
        )
        lie = self.stage.lie
        if lie is not None and lie.lies_at(self.steps - 1):  # testing only: another token than its blocks'
            token = self._other_token(token)
        finish: Literal["stop", "length"] | None = None
        frames: list[TokenFrame] = []
        if self.stage.tokenizer.is_eog(token):
            finish = "stop"
        else:
            frames, stopped = self._text.push(index, token, self.stage.piece(token))
            if self._adjuster is not None:
                self._adjuster.push(token)
            self._index += 1
            if stopped:
                finish = "stop"
            elif self._index >= params.max_tokens or positions >= self.stage.model.n_ctx:
                finish = "length"
        if finish is not None:
            frames += self._text.finish()
            self._finished = True
        return Sampled(index, token, tuple(frames), finish)


def _record(
    x: npt.NDArray[np.generic],
    keep: int | None,
    draft: tuple[int, ...],
    sample: bool,
    result: npt.NDArray[np.floating] | tuple[Sampled, ...] | None,
) -> StepRecord:
    if isinstance(result, tuple):
        out: npt.NDArray[np.generic] | None = np.array([[s.token_id] for s in result], dtype=np.int32)
    else:
        out = result
    x = np.ascontiguousarray(x)
    return StepRecord(
        rows=x.shape[0],
        dtype=WIRE_DTYPES[x.dtype.name],
        data_in=x.tobytes(),
        keep=keep,
        draft=draft,
        sample=sample,
        out_rows=0 if out is None else out.shape[0],
        out_dtype="i32" if out is None else WIRE_DTYPES[out.dtype.name],
        data_out=b"" if out is None else np.ascontiguousarray(out).tobytes(),
    )


def check_same_vocabulary(model: Path, draft: Path) -> None:
    """UnsupportedModel unless `draft` gives every token id the text `model` gives it: a
    draft's guesses are ids, and ids of another vocabulary would mean other words."""
    keys = ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type")
    ours, theirs = GGUFFile(model).metadata, GGUFFile(draft).metadata
    for key in keys:
        if ours.get(key) != theirs.get(key):
            raise UnsupportedModel(
                f"draft {draft.name} has another vocabulary than {model.name} ({key} differs)"
            )
