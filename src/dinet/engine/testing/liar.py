"""Lying engines, for testing verification only: a node that lies about content.

    DINET_ALLOW_LIARS=1 din node --liar corrupt:2
    DINET_ALLOW_LIARS=1 din node --liar random
    DINET_ALLOW_LIARS=1 din node --liar wrong-model:/tmp/other.gguf

A liar still speaks the protocol perfectly (well-formed frames, a signed receipt for
what it sent); only the tokens are false:

- `wrong-model:PATH` generates with another GGUF while advertising the real model's
  id and hash (`derive_wrong_model` writes a plausible one from the default model);
- `corrupt:K` replaces K tokens of each answer, at random positions among its first
  16 (or max_tokens), with random vocabulary tokens, and continues from them (so every
  other token stays consistent with the text so far: only the K positions are false);
  an answer that would end before its lies are told is lengthened by them;
- `random` sends random vocabulary tokens without running the model at all;
- `ignore-grammar` answers as if the request had no grammar (structured outputs);
- `ignore-penalties` answers as if it had no logit bias, penalties nor min-p;
- `fake-logprobs` answers honestly but claims every log-probability 1 nat higher than
  it is (at most 0): a peer overstating its confidence;
- `cover` answers honestly but, as a verifier (`/dinet/verify/1`), reports every claim
  it re-scores as the model's own choice (`covered`): a colluder covering for a liar.

Pipeline stages (`--layers`) lie about their blocks instead, and sign receipts for what
they sent (see `dinet.wire.stage_receipt`):

- `stage-noise` adds noise (STAGE_NOISE of the rows' RMS) to the hidden states it sends
  on at every step; a last stage instead sends a token other than the one its blocks
  choose (the next id that does not end the text);
- `stage-late` does the same from its STAGE_LATE_AFTER-th step on: an audit that looked
  only at the prompt would miss it;
- `stage-forge` computes honestly but signs a receipt for another block range than its own.

Nothing here runs unless DINET_ALLOW_LIARS=1 is set in the environment: settings
refuse a lie otherwise (see `dinet.config`).
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from dinet.wire.messages import GenerationParams, TokenLogprobs
from dinet.wire.verify import ScoresFrame

ALLOW_ENV = "DINET_ALLOW_LIARS"
CORRUPT_WITHIN = 16  # corrupted positions are drawn among an answer's first tokens
_KINDS = "random|ignore-grammar|ignore-penalties|fake-logprobs|cover|stage-noise|stage-late|stage-forge"
_SPEC = re.compile(rf"^(?:({_KINDS})|corrupt:(\d{{1,4}})|wrong-model:(.+))$")
FAKED_LOGPROB_NATS = 1.0
STAGE_NOISE = 0.2
STAGE_LATE_AFTER = 4


def liars_allowed(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(ALLOW_ENV) == "1"


@dataclass(frozen=True)
class Lie:
    kind: Literal[
        "wrong-model",
        "corrupt",
        "random",
        "ignore-grammar",
        "ignore-penalties",
        "fake-logprobs",
        "cover",
        "stage-noise",
        "stage-late",
        "stage-forge",
    ]
    count: int = 0  # tokens replaced per answer (corrupt)
    model: Path | None = None  # the GGUF actually used (wrong-model)

    def __str__(self) -> str:
        if self.kind == "corrupt":
            return f"corrupt:{self.count}"
        if self.kind == "wrong-model":
            return f"wrong-model:{self.model}"
        return self.kind

    @property
    def tampers(self) -> bool:
        """Whether it replaces tokens (see `tamperer`)."""
        return self.kind in ("corrupt", "random")

    @property
    def covers(self) -> bool:
        """Whether, as a verifier, it passes whatever it is asked to check (see `covered`)."""
        return self.kind == "cover"

    @property
    def at_stage(self) -> bool:
        """Whether it is a pipeline stage's lie (and only a stage's)."""
        return self.kind.startswith("stage-")

    def lies_at(self, step: int) -> bool:
        """Whether a lying stage falsifies its output at `step` of a session."""
        return self.kind == "stage-noise" or (self.kind == "stage-late" and step >= STAGE_LATE_AFTER)

    def falsified(self, rows: npt.NDArray[np.float32], step: int) -> npt.NDArray[np.float32]:
        """A lying stage's hidden states at `step` instead of `rows` (T, n_embd)."""
        if self.lies_at(step):
            rms = float(np.sqrt(np.mean(np.square(rows)))) or 1.0
            noise = np.random.default_rng(step).standard_normal(rows.shape).astype(np.float32)
            return rows + STAGE_NOISE * rms * noise
        return rows

    def followed(self, params: GenerationParams) -> GenerationParams:
        """What the liar really generates for: `params` without what it ignores."""
        if self.kind == "ignore-grammar":
            return params.model_copy(update={"grammar": None})
        if self.kind == "ignore-penalties":
            off = {"logit_bias": (), "repetition_penalty": 1.0, "min_p": 0.0}
            return params.model_copy(update={**off, "presence_penalty": 0.0, "frequency_penalty": 0.0})
        return params

    def reported(self, logprobs: TokenLogprobs) -> TokenLogprobs:
        """The log-probabilities it claims."""
        if self.kind != "fake-logprobs":
            return logprobs
        return logprobs.model_copy(update={"logprob": min(0.0, logprobs.logprob + FAKED_LOGPROB_NATS)})

    def tamperer(self, start: int, max_tokens: int, seed: int | None = None) -> Tamperer:
        """The lies for one answer whose completion runs from `start` to `max_tokens`."""
        rng = random.Random(seed)
        positions: frozenset[int] = frozenset()
        if self.kind == "corrupt":
            window = range(start, min(max_tokens, start + CORRUPT_WITHIN))
            positions = frozenset(rng.sample(window, min(self.count, len(window))))
        return Tamperer(self.kind == "random", set(positions), rng)


def parse_lie(text: str) -> Lie:
    """`random`, `corrupt:K` (K >= 1), `wrong-model:PATH` (an existing GGUF file),
    `ignore-grammar`, `ignore-penalties`, `fake-logprobs`, `cover`, or a stage's
    `stage-noise`, `stage-late`, `stage-forge`."""
    match = _SPEC.match(text.strip())
    if match is None:
        raise ValueError(
            f"unknown lie {text!r}: use random, corrupt:K, wrong-model:PATH, ignore-grammar, "
            "ignore-penalties, fake-logprobs, cover, or for a stage stage-noise, stage-late or stage-forge"
        )
    if match.group(1):
        return Lie(match.group(1))  # type: ignore[arg-type]  # the pattern admits only the kinds
    if match.group(2):
        count = int(match.group(2))
        if count < 1:
            raise ValueError("corrupt:K needs K >= 1")
        return Lie("corrupt", count=count)
    path = Path(match.group(3))
    if not path.is_file():
        raise ValueError(f"wrong-model: no GGUF file at {path}")
    return Lie("wrong-model", model=path)


@dataclass
class Tamperer:
    """Decides, token by token, what a lying worker sends instead of the truth."""

    replaces_all: bool  # random: the model is not consulted at all
    pending: set[int]  # corrupt: completion indices still to replace
    rng: random.Random

    def token(
        self, index: int, chosen: int, random_token: Callable[[random.Random], int], ending: bool = False
    ) -> int:
        """What to send at `index` instead of `chosen`. `ending`: `chosen` would end the
        answer; a corrupting liar with lies still to tell replaces it, so every answer
        carries its K lies even when the truth is shorter."""
        lie_now = index in self.pending or (ending and any(p >= index for p in self.pending))
        if not (self.replaces_all or lie_now):
            return chosen
        if lie_now:
            self.pending.discard(min(p for p in self.pending if p >= index))
        while (other := random_token(self.rng)) == chosen:
            pass
        return other


def covered(scores: ScoresFrame) -> ScoresFrame:
    """`scores` forged so that every claimed token passes `dinet.trust.verify.judge`: the
    top choice (greedy), its draw interval the whole of [0, 1) (sampled), allowed."""
    forged = tuple(
        p.model_copy(
            update={
                "rank": 0, "logprob": p.best_logprob, "allowed": True,
                "lo": None if p.lo is None else 0.0, "hi": None if p.hi is None else 1.0,
                "drawn_logprob": None if p.drawn_logprob is None else p.best_logprob,
            }
        )
        for p in scores.positions
    )  # fmt: skip
    return scores.model_copy(update={"positions": forged})


# -- a plausible wrong model ------------------------------------------------------------

# Layers whose output is zeroed (the block adds nothing to the residual stream). Without
# these four of SmolLM2-135M's 30 it still writes on-topic English ("Gravity is a
# fundamental concept in physics that describes the presence of mass..."), but its own
# words; six dropped layers gave gibberish. Two dropped layers were too close to the real
# model for short sampled answers: 4% of them passed verification.
DROPPED_LAYERS = (6, 12, 18, 24)
_ZEROED = ("attn_output.weight", "ffn_down.weight")


def derive_wrong_model(source: Path, target: Path, layers: tuple[int, ...] = DROPPED_LAYERS) -> Path:
    """Copy `source` GGUF to `target` with `layers` switched off.

    Each listed block's attention output and FFN down projections are zeroed in
    place (Q4_1/Q8_0 blocks of zero bytes decode to zero weights), so the file stays
    a valid GGUF of the same architecture and size: the same tokenizer and chat
    template, a different model.
    """
    import gguf  # only this helper needs it

    shutil.copyfile(source, target)
    reader = gguf.GGUFReader(target)
    spans = [
        (int(t.data_offset), int(t.n_bytes))
        for t in reader.tensors
        if any(t.name == f"blk.{i}.{suffix}" for i in layers for suffix in _ZEROED)
    ]
    del reader  # release the memory map before writing
    if len(spans) != 2 * len(layers):
        raise ValueError(f"{source} lacks some of the tensors of layers {layers}")
    with target.open("r+b") as out:
        for offset, size in spans:
            out.seek(offset)
            out.write(bytes(size))
    return target
