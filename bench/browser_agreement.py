"""How often the tab's greedy answers equal native llama.cpp's, and pass native verification.

Starts a node with its API beside it, loads the model in a headless Chromium tab (from the
gateway's chunks), and for N chat prompts (question forms x topics) greedy-decodes in the
tab and natively (llama-cpp-python, 1 thread each). Counts answers identical token for
token, and answers whose every token lies within the verifier's `greedy_gap` of native
llama.cpp's arg-max (what a native verifier accepts). One JSON line.

    .venv/bin/python bench/browser_agreement.py [--prompts 100] [--tokens 16]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import llama_cpp.llama_cpp as llama_c
import numpy as np
from playwright.sync_api import sync_playwright

from _tab_node import node_for_tabs
from dinet.engine._paths import default_model_path
from dinet.engine.llama._llama_cpp import chat_formatter, load_llama
from dinet.trust.verify import DEFAULT_TOLERANCES

ASKS = ["What is", "Explain", "Write a sentence about", "Give me a fact about", "Describe"]
ASKS += [
    "Why do people like",
    "Name two things about",
    "Tell me a joke about",
    "How does one learn",
    "Summarise",
]
TOPICS = [
    "the moon",
    "Paris",
    "photosynthesis",
    "a cat",
    "rain",
    "chess",
    "bread",
    "the ocean",
    "music",
    "trains",
]
LOAD_JS = """async (modelHash) => {
  const dinet = await import('/browser/dinet-node.js');
  const {blob} = await dinet.openModel(modelHash);
  window.engine = await dinet.loadEngine(blob, {threads: 1});
}"""
GREEDY_JS = """async ([prompt, n]) => {
  const ids = await window.engine.tokenize(prompt);
  return [ids, (await window.engine.greedy(ids, n)).tokens];
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    llm = load_llama(default_model_path(), threads=1)
    formatter = chat_formatter(llm)
    assert formatter is not None
    questions = [f"{a} {t}?" for a in ASKS for t in TOPICS][: args.prompts]
    prompts = [str(formatter(messages=[{"role": "user", "content": q}]).prompt) for q in questions]  # type: ignore[list-item]

    def logits() -> np.ndarray:
        return np.ctypeslib.as_array(llama_c.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))

    def native_greedy(ids: list[int]) -> list[int]:
        llm.reset()
        llm.eval(ids)
        out: list[int] = []
        while len(out) < args.tokens:
            token = int(np.argmax(logits()))
            if llama_c.llama_vocab_is_eog(llm._model.vocab, token):
                break
            out.append(token)
            llm.eval([token])
        return out

    def worst_gap(ids: list[int], answer: list[int]) -> float:
        llm.reset()
        llm.eval(ids)
        worst = 0.0
        for token in answer:
            scores = logits()
            worst = max(worst, float(scores.max() - scores[token]))
            llm.eval([token])
        return worst

    with tempfile.TemporaryDirectory(prefix="dinet-bench-") as tmp, node_for_tabs(Path(tmp)) as (node, url):
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=shutil.which("chromium"), headless=True, args=["--no-sandbox"]
            )
            page = browser.new_page()
            page.set_default_timeout(3_600_000)
            page.goto(url)
            page.evaluate(LOAD_JS, node.model_hash)
            gaps, identical = [], 0
            for prompt in prompts:
                ids, answer = page.evaluate(GREEDY_JS, [prompt, args.tokens])
                identical += answer == native_greedy(ids)
                gaps.append(worst_gap(ids, answer))
            browser.close()
    passed = sum(g <= DEFAULT_TOLERANCES.greedy_gap for g in gaps)
    print(
        f"{len(prompts)} prompts, {args.tokens} tokens: {identical} identical,"
        f" {passed} pass native verification"
    )
    print(
        json.dumps(
            {
                "bench": "browser_agreement",
                "prompts": len(prompts),
                "tokens": args.tokens,
                "identical": identical,
                "pass_greedy_gap": passed,
                "greedy_gap": DEFAULT_TOLERANCES.greedy_gap,
                "worst_gap": round(max(gaps), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
