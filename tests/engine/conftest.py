"""Engine fixtures: the real default model, real worker processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dinet.engine import WorkerEngine, default_model_path

THREADS = 2


@pytest.fixture(scope="session")
def model_path() -> Path:
    return default_model_path()


@pytest.fixture(scope="session")
def llm(model_path: Path) -> Iterator[object]:
    """In-process llama.cpp, loaded the way the worker loads it (AMX workaround included)."""
    from dinet.engine.llama._llama_cpp import load_llama

    model = load_llama(model_path, threads=THREADS)
    yield model
    model.close()


@pytest.fixture
async def engine(model_path: Path) -> AsyncIterator[WorkerEngine]:
    async with WorkerEngine(model_path, threads=THREADS) as worker_engine:
        yield worker_engine
