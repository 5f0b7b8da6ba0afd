"""Inference behind one interface: a llama.cpp worker process per loaded model.

The node never imports llama.cpp itself: `WorkerEngine` runs it in a subprocess
(`dinet.engine._worker`), so a crash or a runaway allocation takes down the worker,
never the node. Decoding is deterministic (`dinet.engine.sampler`).

Pipeline sharding runs layer ranges of a GGUF in PyTorch: `dinet.engine.shard`
(imported on its own, so that a node without shards never loads torch).
"""

from dinet.engine._paths import default_model_path
from dinet.engine.info import ModelInfo, WorkerReady
from dinet.engine.sampler import choose_token, uniform
from dinet.engine.worker import WorkerEngine

__all__ = [
    "ModelInfo",
    "WorkerEngine",
    "WorkerReady",
    "choose_token",
    "default_model_path",
    "uniform",
]
