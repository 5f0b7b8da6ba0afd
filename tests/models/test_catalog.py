"""Model names: the known ids (the default SmolLM2 and Gemma 3), and paths."""

from __future__ import annotations

import shutil
import sys

import pytest

from dinet.engine import default_model_path, gemma_model_path
from dinet.errors import ModelNotFound
from dinet.models.catalog import DEFAULT_MODEL_ID, GEMMA_MODEL_ID, resolve_model


def test_known_ids_and_their_own_files_resolve_to_one_id():
    gemma = gemma_model_path()
    assert gemma.name == "gemma3-270m-q4_k_m.gguf"
    assert resolve_model(GEMMA_MODEL_ID).path == gemma
    assert resolve_model(None).model_id == DEFAULT_MODEL_ID
    # However a node is told where a known model is, it offers it under the model's id.
    assert resolve_model(str(gemma)).model_id == GEMMA_MODEL_ID
    assert resolve_model(str(default_model_path())).model_id == DEFAULT_MODEL_ID


def test_other_files_go_by_their_name_and_unknown_ids_say_what_is_known(tmp_path):
    copy = tmp_path / "My-Model.gguf"
    shutil.copyfile(default_model_path(), copy)  # the same bytes, but not the known file
    assert resolve_model(str(copy)).model_id == "my-model"
    with pytest.raises(ModelNotFound, match=f"{DEFAULT_MODEL_ID}.*{GEMMA_MODEL_ID}"):
        resolve_model("gemma-7b")


def test_a_missing_gemma_model_names_the_make_target(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    with pytest.raises(ModelNotFound, match="make gemma-model"):
        gemma_model_path()
    with pytest.raises(ModelNotFound, match="make gemma-model"):
        resolve_model(GEMMA_MODEL_ID)
