"""Which model file a name refers to: a path, or the id of a model we know how to find."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dinet.engine import default_model_path
from dinet.errors import ModelNotFound

DEFAULT_MODEL_ID = "smollm2-135m-instruct"


@dataclass(frozen=True)
class LocalModel:
    model_id: str
    path: Path


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
