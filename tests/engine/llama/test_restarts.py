"""Bounded restarts: a worker that keeps dying is not respawned forever."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from tests.engine._engine_helpers import chat, collect

from dinet.engine import WorkerEngine
from dinet.errors import EngineCrashed, EngineUnavailable


async def crash_mid_request(engine: WorkerEngine) -> None:
    """Kill the worker at the first token of a request, as a bad tensor would."""
    with pytest.raises(EngineCrashed):
        async for _ in engine.generate(chat("Count from one to fifty.", max_tokens=64)):
            assert engine.pid is not None
            os.kill(engine.pid, signal.SIGKILL)


async def test_crashes_in_a_row_end_in_giving_up_not_a_loop(model_path: Path) -> None:
    async with WorkerEngine(model_path, threads=1, max_restarts=1, restart_backoff_s=0.05) as engine:
        await crash_mid_request(engine)
        assert engine.available  # one crash: restarted at once
        await crash_mid_request(engine)
        assert not engine.available and "gave up after 2 failures in a row" in (engine.failed or "")
        assert engine.pid is None and engine.restarts == 1
        with pytest.raises(EngineUnavailable, match="gave up"):
            await collect(engine, chat("Hi", max_tokens=2))
        assert engine.pid is None  # refused at once: no new worker was spawned


async def test_a_completed_request_resets_the_count(model_path: Path) -> None:
    async with WorkerEngine(model_path, threads=1, max_restarts=1, restart_backoff_s=0.05) as engine:
        await crash_mid_request(engine)
        assert (await collect(engine, chat("Hi", max_tokens=2))).end.usage.completion_tokens >= 1
        await crash_mid_request(engine)  # a crash now and then is not a crash loop
        assert engine.available and engine.restarts == 2
        assert (await collect(engine, chat("Hi", max_tokens=2))).end.usage.completion_tokens >= 1
