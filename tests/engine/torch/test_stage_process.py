"""A stage's blocks in a sandboxed worker process: confined, and bit for bit the
in-process stage's outputs; bad steps refused, a dead worker started again."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from tests.engine._engine_helpers import chat

from dinet.engine.sandbox._lsm import landlock_abi, seccomp_supported
from dinet.engine.torch._stage import Stage, StageRequestError
from dinet.engine.torch.stage_process import StageProcess, StageWorkerDied

needs_sandbox = pytest.mark.skipif(
    landlock_abi() == 0 or not seccomp_supported(), reason="this kernel lacks Landlock or seccomp"
)


@pytest.fixture(scope="module")
def workers(model_path: Path, tmp_path_factory):
    log = tmp_path_factory.mktemp("stage-workers") / "worker.log"
    started = [
        StageProcess(model_path, a, b, threads=1, lie=None, sandbox=True, log_path=log)
        for a, b in ((0, 15), (15, 30))
    ]
    try:
        yield [w.start() for w in started]
    finally:
        for w in started:
            w.close()


@pytest.fixture(scope="module")
def in_process(model_path: Path) -> list[Stage]:
    return [Stage.load(model_path, a, b) for a, b in ((0, 15), (15, 30))]


def run(stages, prompt: str, checked: bool = False):
    """Greedy decoding through the two stages by hand: the hidden states and tokens of each step."""
    params = chat(prompt, max_tokens=6)
    front, back = (s.open(params, "f16", checked=checked) for s in stages)
    x = np.asarray(front.prompt_ids, dtype=np.int32).reshape(-1, 1)
    hidden, tokens = [], []
    for _ in range(6):
        h = front.forward(x)
        chosen = back.forward(h)
        hidden.append(h)
        tokens.append(chosen[-1].token_id)
        if chosen[-1].finish_reason is not None:
            break
        x = np.array([[tokens[-1]]], dtype=np.int32)
    return hidden, tokens, (front, back)


@needs_sandbox
def test_a_sandboxed_stage_worker_is_confined_and_gives_the_in_process_stage_s_outputs(workers, in_process):
    for w in workers:
        assert w.sandbox_status is not None and w.sandbox_status.warnings == ()
        proc = Path(f"/proc/{w.pid}/status").read_text()
        assert "\nSeccomp:\t2\n" in proc and "\nNoNewPrivs:\t1\n" in proc
        assert os.readlink(f"/proc/{w.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    remote_hidden, remote_tokens, sessions = run(workers, "What is the largest planet?", checked=True)
    local_hidden, local_tokens, local = run(in_process, "What is the largest planet?", checked=True)
    assert remote_tokens == local_tokens
    assert all(np.array_equal(a, b) for a, b in zip(remote_hidden, local_hidden, strict=True))
    assert [r.digests for r in sessions[0].log] == [r.digests for r in local[0].log]  # receipts agree too
    for remote, here in zip(sessions, local, strict=True):  # the digests a receipt signs, taken in the worker
        assert remote.digests() == here.digests() == [r.digests for r in here.log]
    assert sessions[1].held == local[1].held and sessions[1].steps == local[1].steps


def test_a_bad_step_is_refused_and_the_worker_keeps_serving(workers):
    params = chat("Hi", max_tokens=4)
    session = workers[1].open(params)
    with pytest.raises(StageRequestError, match="tensor of 56 bytes"):
        session.forward(np.zeros((2, 7), dtype=np.float32))  # not n_embd wide
    out = session.forward(np.zeros((3, workers[1].model.n_embd), dtype=np.float32))
    assert isinstance(out, tuple) and len(out) == 1


def test_a_killed_worker_fails_its_sessions_and_is_started_again(workers):
    worker = workers[0]
    session = worker.open(chat("Hi", max_tokens=4))
    os.kill(worker.pid, signal.SIGKILL)
    with pytest.raises(StageWorkerDied):
        session.forward(np.asarray(session.prompt_ids, dtype=np.int32).reshape(-1, 1))
    again = worker.open(chat("Hi", max_tokens=4))  # a new worker
    assert worker.restarts == 1
    out = again.forward(np.asarray(again.prompt_ids, dtype=np.int32).reshape(-1, 1))
    assert out.shape == (len(again.prompt_ids), worker.model.n_embd)
