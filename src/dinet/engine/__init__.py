"""Inference behind one interface, in three kinds of code.

- `llama/`: the llama.cpp engine. The node never imports llama.cpp itself:
  `WorkerEngine` (`llama.worker_client`) runs it in a worker process
  (`llama.worker_process`), so a crash or a runaway allocation takes down the worker,
  never the node. Node and worker speak `worker_protocol`.
- `sandbox/`: what confines every worker process (no network, the model read-only,
  resource limits), for any kind of worker.
- `torch/`: pipeline sharding, layer ranges of a GGUF run in PyTorch as stages
  (`torch.shard`; imported on its own, so that a node without shards never loads torch).

Shared by the kinds: the generation loop (`_generate`), the deterministic sampler
(`sampler`), token text and stop strings (`_text`), the model's description (`info`)
and where the models are (`_paths`). `testing/` holds engines for tests only (liars).

Names are imported on first use: the sandbox launcher (`sandbox._launcher`) imports
this package before every worker starts and must not pay for trio and pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dinet.engine._paths import default_model_path, embedding_model_path, gemma_model_path
    from dinet.engine.info import ModelInfo
    from dinet.engine.llama.worker_client import WorkerEngine
    from dinet.engine.sampler import choose_token, uniform
    from dinet.engine.worker_protocol import WorkerReady

_PUBLIC = {
    "ModelInfo": "dinet.engine.info",
    "WorkerEngine": "dinet.engine.llama.worker_client",
    "WorkerReady": "dinet.engine.worker_protocol",
    "choose_token": "dinet.engine.sampler",
    "default_model_path": "dinet.engine._paths",
    "embedding_model_path": "dinet.engine._paths",
    "gemma_model_path": "dinet.engine._paths",
    "uniform": "dinet.engine.sampler",
}

__all__ = [
    "ModelInfo",
    "WorkerEngine",
    "WorkerReady",
    "choose_token",
    "default_model_path",
    "embedding_model_path",
    "gemma_model_path",
    "uniform",
]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'dinet.engine' has no attribute {name!r}")
