"""The model in a browser tab (wllama: llama.cpp in WebAssembly) beside native llama.cpp.

Starts a node with its API beside it (`din node --api-port`, the browser node bundled
from web/ and served at /browser/), opens headless Chromium on it, and alternates, run by
run: native llama.cpp single-thread (llama-cpp-python in this process, n_threads=1), the
tab single-thread, and the tab multi-thread (where the page is cross-origin isolated).
Each tab run starts from an empty Origin Private File System ("contribute": download and
verify every chunk, store, load in wllama, first token: cold), then reloads the page and
does it again from the stored chunks (warm). Every engine greedy-decodes the same chat
prompt; a tab answers it twice per load, and its tok/s and TTFT are the second answer's
(the first runs partly before WebAssembly's optimising compiler has caught up: shown
apart). Medians, a table, then one JSON line.

    .venv/bin/python bench/browser.py [--runs 3] [--tokens 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import llama_cpp.llama_cpp as llama_c
import numpy as np
from playwright.sync_api import Browser, sync_playwright

from _tab_node import node_for_tabs
from dinet.engine._paths import default_model_path
from dinet.engine.llama._llama_cpp import chat_formatter, load_llama

PROMPT = [{"role": "user", "content": "Write a long story about a robot who learns to paint."}]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]

CONTRIBUTE_AND_DECODE = """async ({modelHash, threads, prompt, tokens}) => {
  const dinet = await import('/browser/dinet-node.js');
  const t0 = performance.now();
  const {blob, stats} = await dinet.openModel(modelHash);
  const t1 = performance.now();
  const engine = await dinet.loadEngine(blob, {threads});
  const t2 = performance.now();
  const ids = await engine.tokenize(prompt);
  const first = await engine.greedy(ids, tokens);  // includes WebAssembly's tier-up
  const again = await engine.greedy(ids, tokens);  // the same answer, compiled code
  await engine.close();
  return {fetched: stats.fetched, reused: stats.reused, threads: engine.threads,
          isolated: crossOriginIsolated, storeMs: t1 - t0, loadMs: t2 - t1,
          firstTtftMs: first.ttftMs, firstSteps: first.steps, firstDecodeMs: first.decodeMs,
          ttftMs: again.ttftMs, steps: again.steps, decodeMs: again.decodeMs, tokens: again.tokens};
}"""


def native_run(llm: Any, prompt: list[int], tokens: int) -> dict[str, Any]:
    """Greedy decoding with llama.cpp: prefill then one token at a time (argmax)."""

    def best() -> int:
        logits = np.ctypeslib.as_array(llama_c.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        return int(np.argmax(logits))

    def is_end(token: int) -> bool:
        return bool(llama_c.llama_vocab_is_eog(llm._model.vocab, token))

    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    out = [best()]
    first = time.perf_counter()
    steps = 0
    while len(out) < tokens and not is_end(out[-1]):
        llm.eval([out[-1]])
        steps += 1
        out.append(best())
    if is_end(out[-1]):
        out.pop()  # the tab's answers leave the end token out too
    done = time.perf_counter()
    return {
        "ttftMs": (first - start) * 1000,
        "steps": steps,
        "decodeMs": (done - first) * 1000,
        "tokens": out,
    }


def tab_runs(
    browser: Browser, url: str, model_hash: str, threads: int, prompt: str, tokens: int
) -> list[dict]:
    """A cold contribution (fresh profile) and a warm one (after a reload)."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(600_000)
        page.goto(url)
        args = {"modelHash": model_hash, "threads": threads, "prompt": prompt, "tokens": tokens}
        cold = page.evaluate(CONTRIBUTE_AND_DECODE, args)
        page.reload()
        warm = page.evaluate(CONTRIBUTE_AND_DECODE, args)
        return [cold, warm]
    finally:
        context.close()


def tok_s(run: dict[str, Any]) -> float:
    return 1000 * run["steps"] / run["decodeMs"] if run["decodeMs"] else 0.0


def to_first_token_s(run: dict[str, Any]) -> float:
    return (run["storeMs"] + run["loadMs"] + run["firstTtftMs"]) / 1000


def med(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64, help="greedy tokens per answer")
    parser.add_argument("--threads", type=int, default=2, help="the tab's multi-thread run")
    args = parser.parse_args()
    path = default_model_path()
    llm = load_llama(path, threads=1)
    formatter = chat_formatter(llm)
    assert formatter is not None
    prompt_text = str(formatter(messages=PROMPT).prompt)  # type: ignore[arg-type]
    prompt = llm.tokenize(prompt_text.encode(), add_bos=False, special=True)
    with tempfile.TemporaryDirectory(prefix="dinet-bench-") as tmp, node_for_tabs(Path(tmp)) as (node, url):
        assert node.model_hash is not None
        results: dict[str, list[dict[str, Any]]] = {"native": [], "tab-1": [], "tab-N": []}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=shutil.which("chromium"), headless=True, args=FLAGS
            )
            try:
                for run in range(args.runs):
                    order = ["native", "tab-1", "tab-N"]
                    order = order[run % 3 :] + order[: run % 3]  # alternate who goes first
                    for name in order:
                        if name == "native":
                            results[name].append(native_run(llm, prompt, args.tokens))
                            continue
                        threads = 1 if name == "tab-1" else args.threads
                        cold, warm = tab_runs(
                            browser, url, node.model_hash, threads, prompt_text, args.tokens
                        )
                        results[name].append({"cold": cold, "warm": warm})
                        print(
                            f"run {run} {name}: {tok_s(warm):.1f} tok/s, threads {warm['threads']}",
                            flush=True,
                        )
            finally:
                browser.close()
    native = results["native"]
    same_text = all(r["warm"]["tokens"] == native[0]["tokens"] for r in results["tab-1"])
    rows: dict[str, dict[str, float]] = {
        "native llama.cpp, 1 thread": {
            "tok_s": med([tok_s(r) for r in native]),
            "ttft_ms": med([r["ttftMs"] for r in native]),
        }
    }
    for name, label in (("tab-1", "tab, 1 thread"), ("tab-N", f"tab, {args.threads} threads")):
        runs = results[name]
        warm_runs = [r["warm"] for r in runs]
        if name == "tab-N" and not all(r["threads"] > 1 for r in warm_runs):
            label += " (fell back to 1)"
        rows[label] = {
            "tok_s": med([tok_s(r) for r in warm_runs] + [tok_s(r["cold"]) for r in runs]),
            "ttft_ms": med([r["ttftMs"] for r in warm_runs] + [r["cold"]["ttftMs"] for r in runs]),
            "first_tok_s": med([1000 * r["firstSteps"] / r["firstDecodeMs"] for r in warm_runs]),
            "first_ttft_ms": med([r["firstTtftMs"] for r in warm_runs]),
            "cold_s": med([to_first_token_s(r["cold"]) for r in runs]),
            "warm_s": med([to_first_token_s(r) for r in warm_runs]),
            "cold_store_s": med([r["cold"]["storeMs"] / 1000 for r in runs]),
            "warm_store_s": med([r["storeMs"] / 1000 for r in warm_runs]),
            "load_s": med([r["loadMs"] / 1000 for r in warm_runs]),
        }
    native_tok_s = rows["native llama.cpp, 1 thread"]["tok_s"]
    print()
    print(f"{'engine':<28} {'tok/s':>7} {'x native':>9} {'TTFT ms':>8} {'cold s':>7} {'warm s':>7}")
    for label, r in rows.items():
        ratio = r["tok_s"] / native_tok_s if native_tok_s else float("nan")
        print(
            f"{label:<28} {r['tok_s']:>7.1f} {ratio:>9.2f} {r['ttft_ms']:>8.0f}"
            f" {r.get('cold_s', float('nan')):>7.2f} {r.get('warm_s', float('nan')):>7.2f}"
        )
    for label, r in rows.items():
        if "first_tok_s" in r:
            print(
                f"{label}, first answer after loading:"
                f" {r['first_tok_s']} tok/s, TTFT {r['first_ttft_ms']:.0f} ms"
            )
    print(
        "cold/warm: from 'contribute' (download or read back, verify, store) to model loaded and first token"
    )
    print(f"tab greedy tokens equal native's: {same_text}")
    print(
        json.dumps(
            {
                "bench": "browser",
                "runs": args.runs,
                "tokens": args.tokens,
                "prompt_tokens": len(prompt),
                "same_greedy_tokens": same_text,
                **{k.replace(" ", "_").replace(",", "").replace(".", ""): v for k, v in rows.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
