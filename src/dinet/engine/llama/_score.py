"""Re-scoring a claimed completion in one prefill (the worker's side of verification).

The prompt and the claimed tokens go through llama.cpp as ordinary prompt batches
(chunks of n_batch), with logits requested only at the positions that predict a
claimed token: position p's logits are the distribution of token p + 1. That is one
prefill, far cheaper than decoding the same tokens one step at a time.

Batched logits are not bit-identical to the step-by-step logits the answering node
computed (see `dinet.engine._generate`): the judge (`dinet.trust.verify`) allows for that noise.

Scoring runs on a BF16 copy of the model (`scoring_copy`), converted once by
llama.cpp from the very Q4_1 file that is served: llama.cpp's CPU prefill has fast
matrix kernels for BF16 but not for Q4_1 (there it costs about as much per token as
decoding). Measured on SmolLM2-135M, 128 claimed tokens, 1 thread: Q4_1 scoring took
0.5-0.95x the generation time, BF16 0.2-0.38x (a loaded machine; bench/verify.py
takes the figures). The copy's own rounding adds ~0.02 nats to the noise.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import time
from pathlib import Path
from typing import Literal

import llama_cpp
import llama_cpp.llama_cpp as llama_c
import numpy as np
import numpy.typing as npt

from dinet.engine.adjust import Adjuster
from dinet.engine.llama._grammar import Grammar
from dinet.engine.sampler import Sampler
from dinet.wire.verify import PositionScore, ScoresFrame

logger = logging.getLogger(__name__)

_HEAD_MARGIN = 8.0  # first try at the nucleus: tokens within this many units of the best


_WIDER_TYPES = {"bf16": llama_c.LLAMA_FTYPE_MOSTLY_BF16, "f16": llama_c.LLAMA_FTYPE_MOSTLY_F16}


def scoring_copy(model: Path, cache_dir: Path, threads: int) -> Path:
    """A BF16 GGUF of `model` in `cache_dir` (converted on first use, then reused)."""
    return widened_copy(model, cache_dir, threads, "bf16", prefix="score")


def widened_copy(
    model: Path, cache_dir: Path, threads: int, kind: Literal["bf16", "f16"], *, prefix: str = "widened"
) -> Path:
    """A `kind` GGUF of `model` in `cache_dir`, converted by llama.cpp on first use, then
    reused. From a Q4_1 file that is a widening, exact up to the new type's rounding."""
    stat = model.stat()
    key = hashlib.sha256(f"{model.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir / f"{prefix}-{kind}-{key}.gguf"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    params = llama_c.llama_model_quantize_default_params()
    params.ftype = _WIDER_TYPES[kind]
    params.allow_requantize = True  # llama.cpp refuses a quantized input otherwise
    params.nthread = threads
    started = time.perf_counter()
    code = llama_c.llama_model_quantize(str(model).encode(), str(partial).encode(), ctypes.byref(params))
    if code != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"llama.cpp could not convert {model.name} to {kind.upper()} (code {code})")
    partial.replace(target)
    logger.info("%s copy %s written in %.1f s", kind.upper(), target.name, time.perf_counter() - started)
    return target


def score_tokens(
    llm: llama_cpp.Llama,
    prompt: list[int],
    claimed: list[int],
    *,
    temperature: float,
    top_p: float,
    seed: int = 0,
    grammar: Grammar | None = None,
    adjuster: Adjuster | None = None,
) -> ScoresFrame:
    """One PositionScore per claimed token, from a single prefill over prompt + claimed.

    With a `grammar`, each position is scored as the constrained sampler sees it: every
    token the grammar refuses there has a logit of -inf. A claimed token it refuses is
    scored on the plain logits and marked `allowed=False`, as is every token after it
    (the grammar cannot follow a completion that has left it). With an `adjuster`
    (penalties, bias, min-p), each position is scored on the logits it adjusts, as the
    answering peer chose from them; a claimed token min-p rules out (by more than the noise
    between engines) is `allowed=False`."""
    started = time.perf_counter()
    n_vocab = llm.n_vocab()
    sequence = prompt + claimed[:-1]  # the last claimed token is never an input
    first_out = len(prompt) - 1  # logits here predict claimed[0]
    llm.reset()
    llm._ctx.kv_cache_clear()
    batch = llm._batch.batch  # llama-cpp-python's own batch of n_batch slots
    positions: list[PositionScore] = []
    sampler = Sampler(n_vocab)
    broken = False  # the claim has left the grammar
    for start in range(0, len(sequence), llm.n_batch):
        chunk = sequence[start : start + llm.n_batch]
        batch.n_tokens = len(chunk)
        for i, token in enumerate(chunk):
            batch.token[i] = token
            batch.pos[i] = start + i
            batch.seq_id[i][0] = 0
            batch.n_seq_id[i] = 1
            batch.logits[i] = start + i >= first_out
        llm._ctx.decode(llm._batch)
        for i in range(max(0, first_out - start), len(chunk)):
            k = start + i - first_out  # which claimed token these logits predict
            pointer = llama_c.llama_get_logits_ith(llm._ctx.ctx, i)
            raw = np.ctypeslib.as_array(pointer, shape=(n_vocab,))
            logits = raw if adjuster is None else adjuster.logits(raw, spared=claimed[k])
            if adjuster is not None:
                adjuster.push(claimed[k])
            if grammar is not None and not broken:
                allowed_here = grammar.allows_all()  # one pass: the mask, and whether the claim keeps to it
                broken = not allowed_here[claimed[k]]
                if not broken:
                    logits = np.where(allowed_here, logits, -np.inf)
                    grammar.accept(claimed[k])
            # A token the request rules out (its grammar, or min-p) is scored on the plain logits.
            allowed = not broken and bool(np.isfinite(logits[claimed[k]]))
            scored = logits if allowed else raw
            drawn = sampler.choose(scored, k, temperature=temperature, top_p=top_p, seed=seed)
            position = score_position(scored, k, claimed[k], temperature, top_p, drawn)
            positions.append(position if allowed else position.model_copy(update={"allowed": False}))
    llm._ctx.kv_cache_clear()  # the next request starts from an empty cache anyway
    return ScoresFrame(
        prompt_tokens=len(prompt),
        positions=tuple(positions),
        elapsed_ms=1000.0 * (time.perf_counter() - started),
    )


def score_position(
    logits: npt.NDArray[np.floating],
    index: int,
    token: int,
    temperature: float,
    top_p: float,
    drawn: int | None = None,
) -> PositionScore:
    """Rank, log-probabilities and (sampled) draw interval of `token` under `logits`."""
    values = np.asarray(logits, dtype=np.float64)  # (n_vocab,)
    claimed = float(values[token])
    top = float(values.max())
    ahead = values > claimed  # (n_vocab,) tokens the sampler orders first (ties: lower ids)
    ahead[:token] |= values[:token] == claimed
    lo = hi = None
    if temperature > 0.0:
        weights = np.exp((values - top) / temperature)  # the sampler's weights; the best is 1.0
        before = float(weights[ahead].sum())
        nucleus = _nucleus_mass(values, weights, top, temperature, top_p)
        lo, hi = before / nucleus, (before + float(weights[token])) / nucleus
    log_z = top + float(np.log(np.exp(values - top).sum()))
    return PositionScore(
        index=index,
        token_id=token,
        rank=int(np.count_nonzero(ahead)),
        logprob=min(0.0, claimed - log_z),
        best_logprob=min(0.0, top - log_z),
        lo=lo,
        hi=hi,
        drawn_logprob=None if lo is None or drawn is None else min(0.0, float(values[drawn]) - log_z),
    )


def _nucleus_mass(
    values: npt.NDArray[np.float64],
    weights: npt.NDArray[np.float64],
    top: float,
    temperature: float,
    top_p: float,
) -> float:
    """The weight of the sampler's nucleus: its draw is `u * nucleus` (see `dinet.engine.sampler`)."""
    total = float(weights.sum())
    if top_p >= 1.0:
        return total
    margin = _HEAD_MARGIN * temperature
    while True:  # sort only the head, as the sampler does, widening it until it holds the nucleus
        head = np.flatnonzero(values >= top - margin)
        head = head[np.argsort(-values[head], kind="stable")]
        cumulative = np.cumsum(weights[head])
        inside = np.flatnonzero(cumulative >= top_p * total)
        if inside.size or head.shape[0] == values.shape[0]:
            return float(cumulative[inside[0]] if inside.size else cumulative[-1])
        margin *= 2


def main(argv: list[str] | None = None) -> int:
    """`python -m dinet.engine.llama._score MODEL CACHE_DIR THREADS`: make the scoring copy, print its path.

    Run by the node before it starts a worker: the sandboxed worker may not write files.
    """
    import sys

    model, cache_dir, threads = (argv if argv is not None else sys.argv[1:])[:3]
    print(scoring_copy(Path(model), Path(cache_dir), int(threads)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
