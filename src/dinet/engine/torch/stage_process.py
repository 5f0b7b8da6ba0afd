"""A pipeline stage whose torch code runs in a sandboxed worker process.

`StageProcess` and its sessions have the face of `Stage` and `StageSession` that the
shard service uses (`open`, `forward`, `log`, the session's counters), so the service
runs either the same way. Every call blocks on the worker's pipe: the service makes
them on the stage's compute thread, one at a time, as it makes the in-process ones.
A step costs one frame each way (a JSON header and the tensor): ~2 x 2.3 KB for one
token of SmolLM2's hidden states, microseconds against a step's milliseconds.

A session the service drops (closed, evicted) is closed in the worker before the next
call. A worker that dies is started again at the next `open`; its sessions are lost,
and their next step fails as `internal` (the client replays the chain).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from dinet.engine.llama.worker_process import _StdinFrames
from dinet.engine.sandbox import SandboxStatus, launcher_env, sandboxed, warn_once
from dinet.engine.testing.liar import Lie
from dinet.engine.torch._stage import WIRE_DTYPES, Sampled, StageRequestError, StepRecord
from dinet.errors import MalformedMessage
from dinet.wire.framing import encode_frame
from dinet.wire.messages import GenerationParams, TokenFrame
from dinet.wire.shard import Draft, decode_tensor

logger = logging.getLogger(__name__)

READY_S = 300.0  # loading torch and the blocks on a busy machine


@dataclass(frozen=True)
class StageFacts:
    """What the service needs to know of the worker's blocks."""

    n_embd: int
    n_ctx: int
    n_vocab: int


class StageWorkerDied(RuntimeError):
    """The worker ended: its sessions are lost (answered as `internal`)."""


class StageProcess:
    def __init__(
        self,
        path: Path,
        start: int,
        stop: int,
        *,
        threads: int,
        lie: Lie | None,
        sandbox: bool,
        log_path: Path,
        draft: Path | None = None,
    ) -> None:
        self._path, self._span, self._threads = path, (start, stop), threads
        self._draft = draft
        self.lie = lie
        self._sandbox = sandbox
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._frames: _StdinFrames | None = None
        self._next_sid = 0
        self._closed: list[int] = []  # sessions dropped since the last call, to close in the worker
        self._lock = threading.Lock()
        self.model = StageFacts(0, 0, 0)
        self.sandbox_status: SandboxStatus | None = None
        self.restarts = -1  # the first start makes it 0
        self._broken = False  # a call found it dead or out of step

    def start(self) -> StageProcess:
        """Start the worker and wait until its blocks are loaded (blocking)."""
        path = self._path
        command = [
            sys.executable, "-m", "dinet.engine.torch.stage_worker", "--model", str(path),
            "--start", str(self._span[0]), "--stop", str(self._span[1]), "--threads", str(self._threads),
        ]  # fmt: skip
        if self.lie is not None:
            command += ["--liar", str(self.lie)]
        models = [path]
        if self._draft is not None:
            command += ["--draft-model", str(self._draft)]
            models.append(self._draft)
        argv = sandboxed(command, readable=models, protect=models) if self._sandbox else command
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=launcher_env()
            )
        assert self._process.stdout is not None
        self._frames = _StdinFrames(self._process.stdout.fileno())
        self._broken = False
        ready = self._reply()
        self.model = StageFacts(ready["n_embd"], ready["n_ctx"], ready["n_vocab"])
        if ready["sandbox"] is not None:
            self.sandbox_status = SandboxStatus.model_validate_json(ready["sandbox"])
            warn_once(self.sandbox_status)
        self.restarts += 1
        return self

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def open(
        self,
        params: GenerationParams,
        dtype: Literal["f32", "f16"] = "f32",
        draft: Draft = "none",
        *,
        checked: bool = False,
    ) -> RemoteSession:
        if self._process is None or self._broken or self._process.poll() is not None:
            logger.warning("the stage worker ended: starting it again")
            self.close()
            self.start()
        sid, self._next_sid = self._next_sid, self._next_sid + 1
        request = {
            "op": "open",
            "sid": sid,
            "params": params.model_dump_json(),
            "dtype": dtype,
            "draft": draft,
            "checked": checked,
        }
        reply = self.call(request)
        session = RemoteSession(self, sid, dtype, tuple(reply["prompt_ids"]), checked, self.restarts)
        weakref.finalize(session, self._dropped, sid)
        return session

    def call(self, request: dict[str, Any], *raw: bytes) -> dict[str, Any]:
        """One request and its reply header (blocking); StageRequestError for one it refuses."""
        assert self._process is not None and self._process.stdin is not None
        with self._lock:
            closing, self._closed = self._closed, []
        try:
            for sid in closing:
                self._send({"op": "close", "sid": sid})
                self._reply()
            self._send(request, *raw)
            reply = self._reply()
        except (OSError, MalformedMessage) as exc:
            raise self._died(str(exc)) from None
        if not reply["ok"]:
            if reply["code"] == "internal":
                raise RuntimeError(reply["error"])
            raise StageRequestError(reply["error"])
        return reply

    def read_raw(self) -> bytes:
        assert self._frames is not None
        payload = self._frames.read_frame()
        if payload is None:
            raise self._died("it ended inside a reply")
        return payload

    def _died(self, why: str) -> StageWorkerDied:
        """The worker broke off: it is killed (if it lingers), and started again at the next open."""
        self._broken = True
        if self._process is not None:
            self._process.kill()
        return StageWorkerDied(f"the stage worker died: {why}")

    def close(self) -> None:
        """End the worker: the end of its stdin, then a kill if it lingers."""
        process = self._process
        if process is None:
            return
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.close()
        except OSError:
            pass  # it died with bytes unread
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()

    def _send(self, header: dict[str, Any], *raw: bytes) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(
            encode_frame(json.dumps(header).encode()) + b"".join(encode_frame(r) for r in raw)
        )
        self._process.stdin.flush()

    def _reply(self) -> dict[str, Any]:
        reply: dict[str, Any] = json.loads(self.read_raw())
        return reply

    def _dropped(self, sid: int) -> None:
        with self._lock:  # any thread (the garbage collector's): the next call closes it
            self._closed.append(sid)


@dataclass
class RemoteSession:
    """A session in the worker; its counters as of the last step."""

    stage: StageProcess
    sid: int
    dtype: Literal["f32", "f16"]
    prompt_ids: tuple[int, ...]
    checked: bool
    generation: int  # the worker it lives in: a session of a worker that died is gone
    steps: int = 0
    held: int = 0
    nbytes: int = 0
    draft_out: tuple[int, ...] = field(default=())

    def forward(
        self,
        x: npt.NDArray[np.generic],
        sample: bool = True,
        *,
        keep: int | None = None,
        draft: tuple[int, ...] = (),
    ) -> npt.NDArray[np.floating] | tuple[Sampled, ...] | None:
        if self.generation != self.stage.restarts:
            raise StageWorkerDied("the stage worker that held this session died")
        dtype = WIRE_DTYPES.get(x.dtype.name)
        if dtype is None:
            raise MalformedMessage(f"a step of {x.dtype.name} rows")
        request = {
            "op": "forward",
            "sid": self.sid,
            "rows": x.shape[0],
            "dtype": dtype,
            "sample": sample,
            "keep": keep,
            "draft": list(draft),
        }
        reply = self.stage.call(request, np.ascontiguousarray(x).tobytes())
        self.steps, self.held, self.nbytes = reply["steps"], reply["held"], reply["nbytes"]
        self.draft_out = tuple(reply["draft_out"])
        if reply["out"] == "none":
            return None
        if reply["out"] == "sampled":
            return tuple(
                Sampled(
                    s["index"],
                    s["token_id"],
                    tuple(TokenFrame.model_validate_json(f) for f in s["frames"]),
                    s["finish_reason"],
                )
                for s in reply["sampled"]
            )
        raw = self.stage.read_raw()
        hidden = decode_tensor(raw, reply["rows"], self.stage.model.n_embd, reply["dtype"])
        return cast("npt.NDArray[np.floating]", hidden)

    def digests(self) -> list[tuple[str, str]] | None:
        """A checked session's (input, output) digest per step, taken in the worker
        (blocking): a receipt needs no step's bytes."""
        if not self.checked:
            return None
        return [(a, b) for a, b in self.stage.call({"op": "digests", "sid": self.sid})["digests"]]

    @property
    def log(self) -> list[StepRecord] | None:
        """A checked session's steps, fetched from the worker (blocking)."""
        if not self.checked:
            return None
        reply = self.stage.call({"op": "log", "sid": self.sid})
        records = []
        for header in reply["steps"]:
            data_in, data_out = self.stage.read_raw(), self.stage.read_raw()
            records.append(
                StepRecord(**header | {"draft": tuple(header["draft"])}, data_in=data_in, data_out=data_out)
            )
        return records
