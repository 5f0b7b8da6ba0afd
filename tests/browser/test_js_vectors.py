"""The browser node's JavaScript spec (web/src/spec/) against docs/vectors/: under Node.js
(every vector, `node --test`) and inside headless Chromium (the sampler and signing, with
the browser's own Math.exp, BigInt and crypto)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright
from tests.gateway._gateway_helpers import CHROMIUM_FLAGS

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
VECTORS = ROOT / "docs" / "vectors"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is not installed: `make test` installs it (npm comes with it)")
    if not (WEB / "node_modules" / "@noble" / "curves").is_dir():
        pytest.fail("web/node_modules is missing: run `make browser` (npm ci --prefix web)")
    return node


def test_js_spec_reproduces_every_vector_under_node():
    run = subprocess.run(
        [_node(), "--test", "--test-reporter=tap", "web/test/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    counts = [line[2:].split(" ", 1) for line in run.stdout.splitlines() if line.startswith("# ")]
    summary = {words[0]: words[1] for words in counts if len(words) == 2}
    assert run.returncode == 0 and summary.get("fail") == "0", run.stdout[-6000:] + run.stderr[-2000:]
    assert int(summary["pass"]) >= 70, summary  # every vector case is a test of its own


def _vector(name: str) -> dict:
    return json.loads((VECTORS / f"{name}.json").read_text(encoding="utf-8"))


def test_js_sampler_and_signing_agree_with_the_vectors_in_chromium(tmp_path):
    bundle = tmp_path / "check.js"
    subprocess.run(
        [
            _node(),
            "-e",
            "require('esbuild').buildSync({entryPoints: [process.argv[1]], outfile: process.argv[2],"
            " bundle: true, format: 'iife', platform: 'browser', target: 'es2022', logLevel: 'warning'})",
            str(WEB / "testing" / "chromium-check.mjs"),
            str(bundle),
        ],
        cwd=WEB,
        check=True,
        timeout=120,
    )
    keys, sampler, receipt, manifest, text = (
        _vector(n) for n in ("keys", "sampler", "receipt", "manifest", "text")
    )
    raw_sampler = (VECTORS / "sampler.json").read_text(encoding="utf-8")
    # The uniform cases as text, so the page reads seeds past 2^53 exactly.
    start = raw_sampler.index('"uniform": [') + len('"uniform": ')
    uniform_text = raw_sampler[start : raw_sampler.index("],\n", start) + 1]
    assert json.loads(uniform_text) == sampler["uniform"]
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is not installed: run `make system-deps` (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.add_script_tag(content=bundle.read_text(encoding="utf-8"))
            got = page.evaluate(
                "(v) => window.dinetSpecCheck(v)",
                {
                    "keys": keys["keys"],
                    "sampler": {**sampler, "uniform_text": uniform_text},
                    "receipt": receipt,
                    "manifest": manifest,
                    "text": text,
                },
            )
        finally:
            browser.close()
    assert got["peerId"] == keys["keys"]["node"]["peer_id"]
    assert bytes(got["libp2pPeerIdBytes"]).hex() == keys["keys"]["node"]["public_key"]
    assert got["uniform"] == [c["u"] for c in sampler["uniform"]]
    assert got["choose"] == [c["token"] for c in sampler["choose"]]
    assert got["chooseMany"] == [d["token"] for d in sampler["choose_many"]["draws"]]
    assert got["nodeSignature"] == receipt["node"]["signature"]
    assert got["countersigned"] == receipt["countersigned_payload"]
    assert got["verified"] == "9f1c6b0e8a2d4c3f9e7b5a1d2c3e4f50"
    assert got["forgedRefused"] is True
    assert (got["manifestBody"], got["manifestSignature"]) == (manifest["body"], manifest["signature"])
    assert got["answers"] == [c["answer"] for c in text["cases"]]
