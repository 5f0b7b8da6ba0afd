"""Which model file a name refers to: a path, or the id of a model we know how to find."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dinet.engine import default_model_path, gemma_model_path
from dinet.errors import ModelNotFound

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
GEMMA_MODEL_ID = "gemma3-270m"  # a base model: raw prompts only, it has no chat template

# The models found on this machine by id, each by its finder (ModelNotFound says how to get it).
KNOWN_MODELS: dict[str, Callable[[], Path]] = {
    DEFAULT_MODEL_ID: default_model_path,
    GEMMA_MODEL_ID: gemma_model_path,
}


@dataclass(frozen=True)
class LocalModel:
    model_id: str
    path: Path


def resolve_model(name: str | None) -> LocalModel:
    """`name` is a GGUF path or a known model id; None means the default model. A path to
    a known model's own file gets that model's id, so it is offered under one id however
    a node was told where it is."""
    name = DEFAULT_MODEL_ID if name is None else name
    if name in KNOWN_MODELS:
        return LocalModel(name, KNOWN_MODELS[name]())
    path = Path(name).expanduser()
    if path.suffix == ".gguf" or path.exists():
        if not path.is_file():
            raise ModelNotFound(f"no model file at {path}")
        path = path.resolve()
        return LocalModel(_known_id(path) or path.stem.lower(), path)
    known = " or ".join(repr(model_id) for model_id in KNOWN_MODELS)
    raise ModelNotFound(f"unknown model {name!r}: give a .gguf path or {known}")


def _known_id(path: Path) -> str | None:
    """The id of the known model whose file is at `path`, if any is."""
    for model_id, find in KNOWN_MODELS.items():
        try:
            if find().resolve() == path:
                return model_id
        except ModelNotFound:
            continue  # not on this machine: `path` is not its file
    return None
