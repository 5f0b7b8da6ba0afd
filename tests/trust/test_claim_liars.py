"""Peers that ignore what a request asks beyond its prompt are caught by verification:
its grammar, its sampling adjustments, the truth of its log-probabilities. Engine
workers (no network): `bench/claims.py` runs the same over 200 requests per liar."""

from __future__ import annotations

import os

import pytest
from tests.trust.claim_cases import LIES, lies_told, requests

from dinet.engine import WorkerEngine, default_model_path
from dinet.engine.testing.liar import ALLOW_ENV


@pytest.fixture
def liars_allowed(monkeypatch):
    monkeypatch.setitem(os.environ, ALLOW_ENV, "1")


@pytest.mark.parametrize("lie", list(LIES))
async def test_a_peer_ignoring_part_of_the_request_is_caught(lie, liars_allowed, tmp_path):
    """Every liar answer that differs from the honest one is flagged, no honest one is.
    Sampled answers that ignore penalties are caught only statistically (their draws
    miss by little): `bench/claims.py` measures how often; here they are greedy."""
    model = default_model_path()
    async with (
        WorkerEngine(model, threads=1, score_cache=tmp_path) as verifier,
        WorkerEngine(model, threads=1) as honest,
        WorkerEngine(model, threads=1, liar=lie) as liar,
    ):
        cases = requests(LIES[lie], 3, seed=7, greedy=lie == "ignore-penalties")
        lied = await lies_told(verifier, honest, liar, cases)
    assert lied >= 2, f"the {lie} liar told only {lied} lies in 3 answers"
