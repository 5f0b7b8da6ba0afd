"""Lying workers (testing only): refused unless allowed; when allowed, they lie but speak well."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from tests.engine._engine_helpers import chat, collect

from dinet.config import NodeSettings
from dinet.engine import WorkerEngine
from dinet.engine.testing.liar import ALLOW_ENV, CORRUPT_WITHIN, derive_wrong_model, parse_lie
from dinet.errors import EngineUnavailable

QUESTION = "Name three rivers in Europe."


def test_din_node_refuses_a_liar_unless_explicitly_allowed(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != ALLOW_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "dinet", "node", "--no-mdns", "--home", str(tmp_path), "--liar", "random"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: ")
    assert ALLOW_ENV in done.stderr
    assert not (tmp_path / "node.json").exists()  # it never started


def test_settings_refuse_a_liar_unless_allowed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    with pytest.raises(ValidationError, match=ALLOW_ENV):
        NodeSettings(home=tmp_path, liar="corrupt:1")
    monkeypatch.setenv(ALLOW_ENV, "0")
    with pytest.raises(ValidationError, match=ALLOW_ENV):
        NodeSettings(home=tmp_path, liar="random")
    monkeypatch.setenv(ALLOW_ENV, "1")
    assert NodeSettings(home=tmp_path, liar="corrupt:2").liar == "corrupt:2"
    with pytest.raises(ValidationError, match="unknown lie"):
        NodeSettings(home=tmp_path, liar="sometimes")
    with pytest.raises(ValidationError, match="no GGUF file"):
        NodeSettings(home=tmp_path, liar=f"wrong-model:{tmp_path / 'missing.gguf'}")


def test_lie_specs_parse() -> None:
    assert parse_lie("corrupt:3").count == 3
    assert parse_lie("random").kind == "random"
    for bad in ("corrupt:0", "corrupt:", "corrupt:x", "wrong-model:", ""):
        with pytest.raises(ValueError):
            parse_lie(bad)


async def test_the_worker_itself_refuses_to_lie_unless_allowed(
    monkeypatch: pytest.MonkeyPatch, model_path: Path
) -> None:
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    with pytest.raises(EngineUnavailable, match="could not start"):
        async with WorkerEngine(model_path, threads=1, liar="random"):
            pass


async def test_liars_change_tokens_but_send_well_formed_answers(
    monkeypatch: pytest.MonkeyPatch, model_path: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv(ALLOW_ENV, "1")
    params = chat(QUESTION, max_tokens=16)
    async with WorkerEngine(model_path, threads=1) as honest:
        truth = await collect(honest, params)
    wrong = derive_wrong_model(model_path, tmp_path / "wrong.gguf")
    assert wrong.stat().st_size == model_path.stat().st_size
    for lie in ("corrupt:1", "random", f"wrong-model:{wrong}"):
        async with WorkerEngine(model_path, threads=1, liar=lie) as liar:
            told = await collect(liar, params)
            assert liar.info.model_id == "smollm2-135m-instruct"  # it names the real model
        assert [f.index for f in told.frames] == list(range(len(told.frames)))
        assert told.end.usage.completion_tokens == len(told.frames) > 0
        differ = [i for i, (a, b) in enumerate(zip(truth.tokens, told.tokens, strict=False)) if a != b]
        assert differ, lie
        if lie == "corrupt:1":
            assert differ[0] < CORRUPT_WITHIN  # the lie, then a true continuation of it
            assert truth.tokens[: differ[0]] == told.tokens[: differ[0]]
        if lie == "random":
            assert len(differ) >= len(told.tokens) - 1
        if lie.startswith("wrong-model"):
            assert told.text.strip()  # still text, just not this model's


def test_a_stage_lie_is_only_for_a_stage_and_a_whole_node_s_lie_only_for_a_whole_node(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(ALLOW_ENV, "1")
    assert NodeSettings(home=tmp_path, layers="0:10", liar="stage-late").liar == "stage-late"
    with pytest.raises(ValidationError, match="not a lie a pipeline stage"):
        NodeSettings(home=tmp_path, layers="0:10", liar="random")
    with pytest.raises(ValidationError, match="not a lie a whole-model node"):
        NodeSettings(home=tmp_path, liar="stage-noise")
