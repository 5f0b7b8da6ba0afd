"""The gateway beside a node hands out its model's card and chunks over HTTP, and serves
the page cross-origin isolated (so a tab can run llama.cpp on threads)."""

from __future__ import annotations

import hashlib
import json

import httpx
from _engine_tab import contribute, greedy, tab

from dinet.engine._paths import default_model_path


def test_the_gateway_serves_the_held_model_as_verified_chunks(node_api):
    base = f"{node_api.url}/api/chunks/1"
    listed = httpx.get(base).json()["models"]
    assert [m["model_hash"] for m in listed] == [node_api.model_hash]
    card = json.loads(httpx.get(f"{base}/{node_api.model_hash}/card").json()["body"])
    assert card["model_hash"] == node_api.model_hash and listed[0]["chunks"] == len(card["chunk_hashes"])
    whole = default_model_path().read_bytes()
    offset = 0
    for index in (0, 1, len(card["chunk_hashes"]) - 1):
        reply = httpx.get(f"{base}/{node_api.model_hash}/{index}")
        assert reply.headers["content-type"] == "application/octet-stream"
        assert hashlib.sha256(reply.content).hexdigest() == card["chunk_hashes"][index]
        offset = sum(card["chunk_sizes"][:index])
        assert reply.content == whole[offset : offset + card["chunk_sizes"][index]]


def test_models_and_chunks_it_does_not_hold_are_typed_errors(node_api):
    base = f"{node_api.url}/api/chunks/1"
    other = "0" * 64
    for url in (f"{base}/{other}/card", f"{base}/{other}/0", f"{base}/not-a-hash/0"):
        reply = httpx.get(url)
        assert reply.status_code == 404, url
        assert reply.json()["error"]["code"] == "model_not_found"
    past_end = httpx.get(f"{base}/{node_api.model_hash}/8191")
    assert past_end.status_code == 400 and past_end.json()["error"]["code"] == "invalid_request"


def test_the_page_is_cross_origin_isolated_so_wllama_can_use_threads(node_api, chromium):
    page_reply = httpx.get(f"{node_api.url}/")
    assert page_reply.headers["cross-origin-opener-policy"] == "same-origin"
    assert page_reply.headers["cross-origin-embedder-policy"] == "require-corp"
    with tab(chromium, node_api.url) as page:
        assert page.evaluate("crossOriginIsolated") is True
        assert page.evaluate("typeof SharedArrayBuffer") == "function"
        # The page's own scripts and styles still load under require-corp.
        assert page.locator("#prompt").count() == 1
        loaded = contribute(page, node_api.model_hash, threads=2)
        assert loaded["threads"] == 2  # wllama's multi-thread build, not its fallback
        answer = greedy(page, ["<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n"], 4)
        assert answer[0]["tokens"]
