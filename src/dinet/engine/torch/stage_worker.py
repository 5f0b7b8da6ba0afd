"""A pipeline stage's worker process, run in the engine sandbox:
`python -m dinet.engine.torch.stage_worker --model PATH --start A --stop B --threads N
[--draft-model PATH]`.

Started by the node's `StageProcess` (`dinet.engine.torch.stage_process`). The hidden
states a stage computes on come from strangers, so its torch code runs here, with no
network, the model read-only and no new processes, not in the node. It loads its
blocks, writes one ready header, then answers requests one at a time, in order.

Every message is a frame (4-byte big-endian length, payload): a JSON header, and for
a step the raw tensor frame after it, exactly as on `/dinet/shard/1`.

- `{"op": "open", "sid": n, "params": {…}, "dtype": …, "draft": …, "checked": b}` ->
  `{"ok": true, "prompt_ids": […]}`
- `{"op": "forward", "sid": n, "rows": r, "dtype": d, "sample": b, "keep": k, "draft": […]}`
  + tensor -> `{"ok": true, "out": "hidden"|"sampled"|"none", "rows": r, "dtype": d,
  "sampled": […], "steps": s, "held": h, "draft_out": […], "nbytes": m}` (+ tensor for hidden)
- `{"op": "log", "sid": n}` -> `{"ok": true, "steps": [{…}, …]}` + per step its input
  and its output frame (possibly empty)
- `{"op": "digests", "sid": n}` -> `{"ok": true, "digests": [[in, out], …]}` (what a
  receipt signs, without the bytes)
- `{"op": "close", "sid": n}` -> `{"ok": true}`

A request it cannot serve is answered `{"ok": false, "code": "bad_request"|"internal",
"error": …}`; after `internal` the session is gone. The end of stdin ends the worker.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import ValidationError

from dinet.engine.llama.worker_process import _claim_stdout, _StdinFrames
from dinet.engine.sandbox import current_status
from dinet.engine.testing.liar import liars_allowed, parse_lie
from dinet.engine.torch._stage import WIRE_DTYPES  # no torch: that comes with Stage.load
from dinet.errors import BadShardInput, MalformedMessage
from dinet.wire.framing import encode_frame
from dinet.wire.messages import GenerationParams
from dinet.wire.shard import decode_tensor

logger = logging.getLogger("dinet.engine.torch.stage_worker")  # __name__ is "__main__"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dinet.engine.torch.stage_worker")
    parser.add_argument("--model", type=Path, required=True, help="GGUF file to load blocks from")
    parser.add_argument("--start", type=int, required=True)
    parser.add_argument("--stop", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True, help="torch threads")
    parser.add_argument("--draft-model", type=Path, default=None, help="a first stage's draft GGUF")
    parser.add_argument(
        "--liar", default=None, help="testing only: a stage's lie (dinet.engine.testing.liar)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s stage-worker %(message)s")
    args = _parse_args(argv)
    out = _claim_stdout()
    from dinet.engine.torch._stage import Stage  # after the stdout swap: torch may print

    lie = parse_lie(args.liar) if args.liar is not None and liars_allowed() else None
    stage = Stage.load(
        args.model, args.start, args.stop, threads=args.threads, lie=lie, draft=args.draft_model
    )
    status = current_status()
    model = stage.model
    ready = {
        "ok": True,
        "n_embd": model.n_embd,
        "n_ctx": model.n_ctx,
        "n_vocab": model.n_vocab,
        "sandbox": None if status is None else status.model_dump_json(),
    }
    _write(out, ready)
    _serve(_StdinFrames(sys.stdin.fileno()), out, stage)
    logger.info("stdin closed; exiting")


def _serve(frames: _StdinFrames, out: BinaryIO, stage: Any) -> None:
    from dinet.engine.torch._stage import StageRequestError

    sessions: dict[int, Any] = {}
    while (payload := frames.read_frame()) is not None:
        request = json.loads(payload)
        op, sid = request.get("op"), request.get("sid")
        raw = frames.read_frame() if op == "forward" else None
        try:
            if op == "open":
                params = GenerationParams.model_validate_json(request["params"])
                session = stage.open(params, request["dtype"], request["draft"], checked=request["checked"])
                sessions[sid] = session
                _write(out, {"ok": True, "prompt_ids": list(session.prompt_ids)})
            elif op == "forward":
                _forward(out, sessions, request, raw or b"", stage.model.n_embd)
            elif op == "log":
                _log(out, sessions[sid])
            elif op == "digests":
                _write(out, {"ok": True, "digests": sessions[sid].digests() or []})
            elif op == "close":
                sessions.pop(sid, None)
                _write(out, {"ok": True})
            else:
                _write(out, {"ok": False, "code": "bad_request", "error": f"unknown op {op!r}"})
        except KeyError:
            _write(out, {"ok": False, "code": "bad_request", "error": f"no session {sid} in the worker"})
        except (StageRequestError, BadShardInput, MalformedMessage, ValidationError) as exc:
            _write(out, {"ok": False, "code": "bad_request", "error": str(exc)})
        except RuntimeError as exc:  # torch's own failures: this session cannot go on
            sessions.pop(sid, None)
            _write(out, {"ok": False, "code": "internal", "error": str(exc)})


def _forward(
    out: BinaryIO, sessions: dict[int, Any], request: dict[str, Any], raw: bytes, n_embd: int
) -> None:
    session = sessions[request["sid"]]
    width = 1 if request["dtype"] == "i32" else n_embd
    x = decode_tensor(raw, request["rows"], width, request["dtype"])
    result = session.forward(x, request["sample"], keep=request["keep"], draft=tuple(request["draft"]))
    reply: dict[str, Any] = {
        "ok": True,
        "steps": session.steps,
        "held": session.held,
        "draft_out": list(session.draft_out),
        "nbytes": session.nbytes,
    }
    if result is None:
        _write(out, {**reply, "out": "none"})
    elif isinstance(result, tuple):
        sampled = [{**asdict(s), "frames": [f.model_dump_json() for f in s.frames]} for s in result]
        _write(out, {**reply, "out": "sampled", "sampled": sampled})
    else:
        dtype = WIRE_DTYPES[result.dtype.name]
        _write(out, {**reply, "out": "hidden", "rows": len(result), "dtype": dtype}, result.tobytes())


def _log(out: BinaryIO, session: Any) -> None:
    records = list(session.log or ())
    headers = [
        {k: v for k, v in asdict(r).items() if k not in ("data_in", "data_out")} | {"draft": list(r.draft)}
        for r in records
    ]
    tensors = [data for r in records for data in (r.data_in, r.data_out)]
    _write(out, {"ok": True, "steps": headers}, *tensors)


def _write(out: BinaryIO, header: dict[str, Any], *raw: bytes) -> None:
    out.write(encode_frame(json.dumps(header).encode()) + b"".join(encode_frame(r) for r in raw))
    out.flush()


if __name__ == "__main__":
    main()
