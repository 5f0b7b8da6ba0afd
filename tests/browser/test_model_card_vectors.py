"""The tab's model card checks (web/src/model_card.js) agree with the spec's vectors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
VECTORS = HERE.parents[1] / "docs" / "vectors"


def test_model_card_js_agrees_with_the_vectors():
    if not (HERE.parents[1] / "web" / "node_modules").is_dir():
        pytest.fail("web/node_modules is missing: run `npm ci --prefix web`")
    ran = subprocess.run(
        ["node", str(HERE / "model_card_vectors.mjs")], capture_output=True, text=True, timeout=60, check=True
    )
    got = json.loads(ran.stdout)
    card = json.loads((VECTORS / "model_card.json").read_text())
    hashes = json.loads((VECTORS / "hashes.json").read_text())
    assert got["model_id"] == json.loads(card["body"])["model_id"]
    assert got["chunk_hashes"] == got["card_chunk_hashes"] == json.loads(card["body"])["chunk_hashes"]
    assert got["refusals"] == ["CardError"] * len(card["refused"])
    assert got["wrong_hash"] == "CardError"
    assert got["roots"] == [m["root"] for m in hashes["merkle"]]
