"""Flash attention in llama.cpp: how much faster it decodes here, and why dinet leaves it off.

llama-server turns flash attention on by default on a CPU (`-fa auto`); dinet's engine
runs llama.cpp without it (llama-cpp-python's default). Two measurements on the shipped
model, in this process, llama.cpp's low-level API, 2 threads:

- speed: tokens per second of decoding, one token per sequence per `llama_decode`, for
  1 and 4 sequences in one context (`n_seq_max`, a KV cache of its own per sequence, as
  `dinet.engine.llama._slots` makes it), flash attention off and on in alternation over
  `--rounds`, medians;
- exactness: two chats taking turns (three turns each, a system prompt in common, one
  greedy and one seeded), answered by an engine with its prefix cache
  (`dinet.engine.llama._generator.Generator`, which restores a chat's saved prompt and
  evaluates only the rest) and by one without, flash attention off and on. The cache
  promises the tokens of a full prefill: the table counts the turns whose answers differ.

Prints a table, then one JSON line.

    .venv/bin/python bench/flash_attention.py [--rounds 5] [--steps 96] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import llama_cpp
import llama_cpp.llama_cpp as llama_c

from dinet.engine import default_model_path
from dinet.engine.llama._generator import Generator
from dinet.engine.llama._llama_cpp import load_llama
from dinet.wire.messages import ChatMessage, GenerationParams, TokenFrame

CTX = 2048  # per sequence, the node's own
PROMPT = 48  # tokens per sequence before decoding starts


class Context:
    """A llama.cpp context of `slots` sequences, flash attention on or off."""

    def __init__(self, llm: llama_cpp.Llama, slots: int, flash: bool) -> None:
        params = llama_c.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx = CTX * slots
        params.n_seq_max = slots
        params.kv_unified = False
        params.flash_attn_type = (
            llama_c.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash else llama_c.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        self._ctx = llama_c.llama_init_from_model(llm._model.model, params)
        self._batch = llama_c.llama_batch_init(512, 0, 1)

    def close(self) -> None:
        llama_c.llama_batch_free(self._batch)
        llama_c.llama_free(self._ctx)

    def decode(self, rows: list[tuple[int, int, int]]) -> None:
        """One llama_decode of (token, position, sequence) rows; logits of the last row only."""
        batch = self._batch
        for i, (token, position, seq) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, position, 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = i == len(rows) - 1
        batch.n_tokens = len(rows)
        if llama_c.llama_decode(self._ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")


def decode_rate(llm: llama_cpp.Llama, slots: int, flash: bool, steps: int) -> float:
    context = Context(llm, slots, flash)
    try:
        for seq in range(slots):  # each sequence its own prompt (arbitrary tokens)
            context.decode([(1000 + 7 * seq + i, i, seq) for i in range(PROMPT)])
        started = time.perf_counter()
        for step in range(steps):
            context.decode([(2000 + seq, PROMPT + step, seq) for seq in range(slots)])
        return slots * steps / (time.perf_counter() - started)
    finally:
        context.close()


SYSTEM = "You are a patient assistant for a community garden. Answer in one or two short sentences."
CHATS = {
    "tomatoes": ["When do I plant tomatoes?", "And how deep?", "How often should I water them?"],
    "roses": ["Why are my rose leaves yellow?", "What should I do about it?", "Thanks! Anything else?"],
}


def answer(generator: Generator, params: GenerationParams) -> tuple[list[int], str]:
    frames: list[TokenFrame] = []
    generator.run(params, 0.0, lambda f: frames.append(f) if isinstance(f, TokenFrame) else None)  # type: ignore[func-returns-value]
    return [f.token_id for f in frames], "".join(f.text for f in frames)


def cache_mismatches(threads: int, flash: bool) -> tuple[int, int]:
    """Turns of the two chats whose answer with the prefix cache differs from a full
    prefill's, and the number of turns."""
    path = default_model_path()
    llms = [load_llama(path, threads=threads, n_ctx=CTX, flash_attn=flash) for _ in range(2)]
    cached = Generator(llms[0], "m", prefix_cache_bytes=64 * 1024 * 1024)
    plain = Generator(llms[1], "m")
    histories: dict[str, list[ChatMessage]] = {name: [] for name in CHATS}
    differ = turns = 0
    for round_ in range(3):
        for name, history in histories.items():  # taking turns: each evicts the other from the context
            question = CHATS[name][round_]
            params = GenerationParams(
                messages=(
                    ChatMessage(role="system", content=SYSTEM),
                    *history,
                    ChatMessage(role="user", content=question),
                ),
                max_tokens=24,
                **({"temperature": 1.0, "seed": 7} if name == "roses" else {}),
            )
            tokens, text = answer(cached, params)
            differ += tokens != answer(plain, params)[0]
            turns += 1
            history += [
                ChatMessage(role="user", content=question),
                ChatMessage(role="assistant", content=text),
            ]
    for llm in llms:
        llm.close()
    return differ, turns


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    llm = load_llama(default_model_path(), threads=args.threads, n_ctx=CTX)

    rates: dict[tuple[int, bool], list[float]] = {(n, f): [] for n in (1, 4) for f in (False, True)}
    for round_ in range(args.rounds):
        for slots in (1, 4):
            order = (False, True) if round_ % 2 == 0 else (True, False)
            for flash in order:
                rates[(slots, flash)].append(decode_rate(llm, slots, flash, args.steps))

    exactness = {flash: cache_mismatches(args.threads, flash) for flash in (False, True)}

    medians = {key: statistics.median(values) for key, values in rates.items()}
    print(f"\n{args.rounds} rounds, off and on alternated; {args.threads} threads, {args.steps} decode steps")
    print(f"  {'sequences':>9}  {'off tok/s':>9}  {'on tok/s':>8}  {'on / off':>8}")
    for slots in (1, 4):
        off, on = medians[(slots, False)], medians[(slots, True)]
        print(f"  {slots:>9}  {off:>9.1f}  {on:>8.1f}  {on / off:>8.2f}")
    print("  two chats, 3 turns each, with the prefix cache against a full prefill:")
    for flash in (False, True):
        differ, turns = exactness[flash]
        print(f"    flash attention {'on ' if flash else 'off'}: {differ} of {turns} answers differ")
    print(
        json.dumps(
            {
                "bench": "flash_attention",
                "rounds": args.rounds,
                "threads": args.threads,
                "tok_s": {f"{n}_{'on' if f else 'off'}": round(v, 1) for (n, f), v in medians.items()},
                "on_over_off": {str(n): round(medians[(n, True)] / medians[(n, False)], 3) for n in (1, 4)},
                "cache_answers_differ": {"on" if f else "off": list(e) for f, e in exactness.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
