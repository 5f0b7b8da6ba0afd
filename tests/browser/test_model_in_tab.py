"""The model in a tab: fetched from the gateway in verified chunks, kept in OPFS, run in
wllama (llama.cpp in WebAssembly), and decoding as the native node does."""

from __future__ import annotations

import hashlib
import json
from functools import cache
from typing import Any

import httpx
import llama_cpp
import llama_cpp.llama_cpp as llama_c
import numpy as np
import pytest
from _engine_tab import contribute, greedy, tab
from playwright.sync_api import Route

from dinet.engine._paths import default_model_path
from dinet.engine.llama._llama_cpp import chat_formatter, load_llama
from dinet.trust.verify import DEFAULT_TOLERANCES

MODEL = "smollm2-135m-instruct"
MAX_TOKENS = 24
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "Name three colours."},
    ],
    [{"role": "user", "content": "Count from 1 to 12, separated by commas."}],
]
# Text beyond the chat template: digits, accents, emoji, CJK, runs of spaces and newlines.
TEXTS = [
    "3.14159 and 2718281828",
    "café naïve façade Øre",
    "emoji 😀👍🏽 and 日本語のテキスト",
    "a    b\n\n\n\tc  ",
]


@cache
def _vocab() -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=str(default_model_path()), vocab_only=True, verbose=False)


def chat_text(messages: list[dict[str, str]]) -> str:
    """The prompt text the native node builds for a chat (the GGUF's own template)."""
    formatter = chat_formatter(_vocab())
    assert formatter is not None
    return str(formatter(messages=messages).prompt)


def native_tokens(text: str) -> list[int]:
    """llama-cpp-python's tokens for text, as the native node tokenizes a prompt (no BOS)."""
    return list(_vocab().tokenize(text.encode("utf-8"), add_bos=False, special=True))


@cache
def _native() -> llama_cpp.Llama:
    return load_llama(default_model_path(), threads=1)


def greedy_gaps(prompt: list[int], answer: list[int]) -> list[float]:
    """For each token of `answer`, how far (in nats) native llama.cpp's log-probability of it
    lies below its own arg-max at that position: what a native verifier judges (0: the same)."""
    llm = _native()
    llm.reset()
    llm.eval(prompt)
    gaps = []
    for token in answer:
        logits = np.ctypeslib.as_array(llama_c.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        gaps.append(float(logits.max() - logits[token]))  # a difference of logits is one of log-probs
        llm.eval([token])
    return gaps


def native_answer(url: str, messages: list[dict[str, str]]) -> str:
    """The node's own greedy answer through its API."""
    reply = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": MODEL, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0},
        timeout=120,
    )
    reply.raise_for_status()
    return str(reply.json()["choices"][0]["message"]["content"])


def chunk_requests(requests: list[str], model_hash: str) -> list[str]:
    return [u for u in requests if f"/api/chunks/1/{model_hash}/" in u and not u.endswith("/card")]


def test_the_tab_fetches_verifies_and_runs_the_model_and_decodes_like_the_native_node(node_api, chromium):
    with tab(chromium, node_api.url) as page:
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        loaded = contribute(page, node_api.model_hash)
        stats = loaded["stats"]
        assert loaded["size"] == default_model_path().stat().st_size
        assert stats["reused"] == 0 and stats["rejected"] == [] and stats["fetched"] > 1
        assert stats["bytes"] == loaded["size"]
        assert len(chunk_requests(requests, node_api.model_hash)) == stats["fetched"]

        # Greedy answers that a native verifier accepts: each token within its tolerance of
        # native llama.cpp's own arg-max. (Not always the same text: WebAssembly's kernels
        # round differently, and near-ties can swap; the gaps show by how much.)
        prompts = [chat_text(m) for m in CHATS]
        answers = greedy(page, prompts, MAX_TOKENS)
        same = 0
        for messages, answer in zip(CHATS, answers, strict=True):
            assert answer["prompt"] == native_tokens(chat_text(messages))
            assert answer["tokens"], "the tab should generate"
            gaps = greedy_gaps(answer["prompt"], answer["tokens"])
            assert max(gaps) <= DEFAULT_TOLERANCES.greedy_gap, (answer["text"], gaps)
            same += answer["text"] == native_answer(node_api.url, messages)
        print(f"tab's greedy text equal to the node's for {same} of {len(CHATS)} prompts")

        # A reload reads the stored chunks back (and checks them) instead of downloading.
        requests.clear()
        page.reload()
        again = contribute(page, node_api.model_hash)
        assert again["stats"]["reused"] == stats["fetched"]
        assert again["stats"]["fetched"] == 0 and again["stats"]["bytes"] == 0
        assert chunk_requests(requests, node_api.model_hash) == []
        assert greedy(page, prompts[:1], MAX_TOKENS)[0]["text"] == answers[0]["text"]


def test_wllama_tokenizes_like_llama_cpp_python(node_api, chromium):
    texts = [chat_text(m) for m in CHATS] + TEXTS
    with tab(chromium, node_api.url) as page:
        contribute(page, node_api.model_hash)
        in_tab = page.evaluate("texts => Promise.all(texts.map(t => window.engine.tokenize(t)))", texts)
    assert in_tab == [native_tokens(t) for t in texts]


def _corrupt_once(index: int, seen: list[int]) -> Any:
    """A route handler that serves chunk `index` with one byte flipped, the first time only."""

    def handle(route: Route) -> None:
        seen.append(index)
        if len(seen) > 1:
            route.continue_()
            return
        body = bytearray(route.fetch().body())
        body[len(body) // 2] ^= 0xFF
        route.fulfill(status=200, body=bytes(body), content_type="application/octet-stream")

    return handle


def test_a_corrupted_chunk_is_detected_and_refetched(node_api, chromium):
    card = httpx.get(f"{node_api.url}/api/chunks/1/{node_api.model_hash}/card").json()
    hashes = json.loads(card["body"])["chunk_hashes"]
    bad = len(hashes) // 2
    with tab(chromium, node_api.url) as page:
        seen: list[int] = []
        page.route(f"**/api/chunks/1/{node_api.model_hash}/{bad}", _corrupt_once(bad, seen))
        loaded = contribute(page, node_api.model_hash)
        assert seen == [bad, bad]  # served wrong once, then asked again
        assert loaded["stats"]["rejected"] == [bad]
        assert loaded["stats"]["fetched"] == len(hashes)
        # What was stored is the model itself, chunk for chunk.
        stored = page.evaluate(
            """async ({modelHash, index}) => {
              const root = await navigator.storage.getDirectory();
              const dir = await (await root.getDirectoryHandle('dinet-models')).getDirectoryHandle(modelHash);
              const file = await (await dir.getFileHandle(String(index))).getFile();
              return Array.from(new Uint8Array(await file.arrayBuffer()));
            }""",
            {"modelHash": node_api.model_hash, "index": bad},
        )
        assert hashlib.sha256(bytes(stored)).hexdigest() == hashes[bad]
        page.unroute(f"**/api/chunks/1/{node_api.model_hash}/{bad}")
        page.reload()
        again = contribute(page, node_api.model_hash)
        assert again["stats"]["reused"] == len(hashes) and again["stats"]["replaced"] == []


def test_a_chunk_that_never_verifies_fails_the_download_clearly(node_api, chromium):
    with tab(chromium, node_api.url) as page:

        def always_wrong(route: Route) -> None:
            route.fulfill(status=200, body=b"not the chunk", content_type="application/octet-stream")

        page.route(f"**/api/chunks/1/{node_api.model_hash}/2", always_wrong)
        with pytest.raises(Exception, match=r"chunk 2 of model .* did not match its hash in 3 downloads"):
            contribute(page, node_api.model_hash)
