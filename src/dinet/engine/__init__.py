"""Inference behind one interface: a llama.cpp worker process per loaded model.

The node never imports llama.cpp itself: `WorkerEngine` runs it in a subprocess
(`dinet.engine._worker`), sandboxed (`dinet.engine.sandbox`), so a crash or a runaway
allocation takes down the worker, never the node. Decoding is deterministic
(`dinet.engine.sampler`).

Names are imported on first use: the sandbox launcher (`dinet.engine._sandbox`) runs
before every worker and must not pay for trio and pydantic.

Pipeline sharding runs layer ranges of a GGUF in PyTorch: `dinet.engine.shard`
(imported on its own, so that a node without shards never loads torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dinet.engine._paths import default_model_path
    from dinet.engine.info import ModelInfo, WorkerReady
    from dinet.engine.sampler import choose_token, uniform
    from dinet.engine.worker import WorkerEngine

_PUBLIC = {
    "ModelInfo": "dinet.engine.info",
    "WorkerEngine": "dinet.engine.worker",
    "WorkerReady": "dinet.engine.info",
    "choose_token": "dinet.engine.sampler",
    "default_model_path": "dinet.engine._paths",
    "uniform": "dinet.engine.sampler",
}

__all__ = [
    "ModelInfo",
    "WorkerEngine",
    "WorkerReady",
    "choose_token",
    "default_model_path",
    "uniform",
]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'dinet.engine' has no attribute {name!r}")
