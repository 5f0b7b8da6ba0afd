"""The OpenAI-compatible gateway against llama-cpp-python's own OpenAI server.

The same 128-token greedy chat request, streamed over HTTP, alternately to
`din gateway` (in front of one local `din node`: gateway process -> libp2p -> node
process -> engine worker) and to `python -m llama_cpp.server` (same model, same
threads), 5 runs each after one warm-up. Prints time to first token and decode
tokens/s of both, their ratio and difference (medians), then one JSON line.

    .venv/bin/python bench/gateway.py [--runs 5] [--threads 2] [--max-tokens 128]

Each run sends a prompt of its own (a different first line of the system message),
the same to both servers: llama-cpp-python's server reuses the KV cache of the
previous request's matching prefix, which a dinet worker never does, so repeating
one prompt would let the baseline skip most of its prefill.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from dinet.engine import default_model_path
from dinet.node.local_mesh import start_node

QUESTION = "Write a long, detailed story about a lighthouse keeper and a storm."

# Started as `python -c`: llama_cpp.server's own entry point, after the AMX workaround
# that dinet's engine applies (llama_cpp.server has no flag for it; see engine/llama/_llama_cpp.py).
_BASELINE = """
import sys
import llama_cpp.llama_cpp as llama_c
from dinet.engine.llama._llama_cpp import cpu_has_amx
if cpu_has_amx():
    original = llama_c.llama_model_default_params
    def patched():
        params = original()
        params.use_extra_bufts = False
        return params
    llama_c.llama_model_default_params = patched
from llama_cpp.server.__main__ import main
sys.argv = ["llama_cpp.server", *sys.argv[1:]]
main()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_baseline(model: Path, threads: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    args = [
        sys.executable,
        "-c",
        _BASELINE,
        "--model",
        str(model),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--n_ctx",
        "2048",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    _wait_for_models(url, process, 1)
    return process, url


def start_gateway(
    home: Path, bootstrap: str, extra_args: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    home.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable,
        "-m",
        "dinet",
        "gateway",
        "--json",
        "--no-mdns",
        "--port",
        "0",
        "--home",
        str(home),
        "--bootstrap",
        bootstrap,
        *extra_args,
    ]
    with (home / "gateway.log").open("ab") as log:
        process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if k != "DINET_API_KEY"},
        )
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(60)
    if not box or not box[0]:
        process.kill()
        raise SystemExit(f"din gateway did not start; see {home / 'gateway.log'}")
    url = json.loads(box[0])["url"]
    _wait_for_models(url, process, 1)
    return process, url


@contextmanager
def node_behind_gateway(root: Path, threads: int, node_args: list[str]) -> Iterator[tuple[str, str]]:
    """One `din node` (with `node_args`) and a `din gateway` in front of it; yields the
    gateway's base URL and the node's model id, and stops both."""
    node = start_node(root / "node", threads=threads, extra_args=node_args)
    gateway = None
    try:
        gateway, url = start_gateway(root / "gateway", node.addr)
        yield url, str(node.model_id)
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(15)
        node.stop()


def sse_events(url: str, response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The events of an OpenAI-style streamed answer; RuntimeError on a refusal or an
    error mid-answer."""
    if response.status_code != 200:
        raise RuntimeError(f"{url}: {response.status_code} {response.read().decode(errors='replace')[:300]}")
    for line in response.iter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event: dict[str, Any] = json.loads(line[6:])
        if "error" in event:
            raise RuntimeError(f"{url} failed mid-answer: {event['error'].get('message')}")
        yield event


def _wait_for_models(url: str, process: subprocess.Popen[bytes], count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the server exited with {process.returncode}")
        try:
            if len(httpx.get(f"{url}/v1/models", timeout=2).json()["data"]) >= count:
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url}: no model listed after {timeout:g} s")


def streamed_run(
    client: httpx.Client, url: str, model: str, run: int, max_tokens: int
) -> tuple[float, float, int]:
    """(ttft ms, decode tokens/s, content chunks) of one streamed greedy chat answer."""
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": f"[{run}] You are a helpful assistant."},
            {"role": "user", "content": QUESTION},
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    stamps: list[float] = []
    start = time.perf_counter()
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:  # an error after the first token arrives inside the stream
                raise RuntimeError(f"{url} failed mid-answer: {event['error'].get('message')}")
            choices = event.get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                stamps.append(time.perf_counter())
    ttft_ms = (stamps[0] - start) * 1e3
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return ttft_ms, decode, len(stamps)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    model_path = default_model_path()
    results: dict[str, list[tuple[float, float, int]]] = {"llama_cpp.server": [], "din gateway": []}
    failures: dict[str, list[str]] = {name: [] for name in results}
    with tempfile.TemporaryDirectory(prefix="dinet-bench-gw-") as root_name:
        root = Path(root_name)
        node = start_node(root / "node", threads=args.threads)
        baseline = gateway = None
        try:
            baseline, baseline_url = start_baseline(model_path, args.threads, root / "baseline.log")
            gateway, gateway_url = start_gateway(root / "gateway", node.addr)
            baseline_model = httpx.get(f"{baseline_url}/v1/models").json()["data"][0]["id"]
            targets = {
                "llama_cpp.server": (baseline_url, baseline_model),
                "din gateway": (gateway_url, node.model_id),
            }
            with httpx.Client(timeout=300) as client:
                for url, model in targets.values():  # warm both up once, with a prompt of its own
                    streamed_run(client, url, model, -1, 16)
                for run in range(args.runs):
                    order = list(targets) if run % 2 == 0 else list(reversed(targets))
                    for name in order:
                        url, model = targets[name]
                        try:
                            results[name].append(streamed_run(client, url, model, run, args.max_tokens))
                        except (RuntimeError, httpx.HTTPError) as exc:
                            failures[name].append(str(exc))
                            print(f"run {run + 1} on {name} failed: {exc}", file=sys.stderr)
        finally:
            for process in (gateway, baseline):
                if process is not None:
                    process.terminate()
                    process.wait(15)
            node.stop()
    report(results, failures, args)


def report(
    results: dict[str, list[tuple[float, float, int]]],
    failures: dict[str, list[str]],
    args: argparse.Namespace,
) -> None:
    print(
        f"{args.runs} runs each, alternated; {args.max_tokens}-token greedy chat, streamed; "
        f"{args.threads} llama.cpp threads\n"
    )
    print(f"{'run':>4}  {'server':<17} {'ttft ms':>9} {'decode tok/s':>13} {'chunks':>7}")
    for name, runs in results.items():
        for i, (ttft, decode, chunks) in enumerate(runs):
            print(f"{i + 1:>4}  {name:<17} {ttft:>9.1f} {decode:>13.1f} {chunks:>7}")
    med = {
        name: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        for name, runs in results.items()
    }
    base, gw = med["llama_cpp.server"], med["din gateway"]
    ratio = gw[1] / base[1] if base[1] else 0.0
    diff = gw[0] - base[0]
    print()
    print(f"{'median':<23} {'ttft ms':>9} {'decode tok/s':>13}")
    print(f"{'llama_cpp.server':<23} {base[0]:>9.1f} {base[1]:>13.1f}")
    print(f"{'din gateway':<23} {gw[0]:>9.1f} {gw[1]:>13.1f}")
    print(f"{'gateway / server':<23} {diff:>+9.1f} {ratio:>13.3f}   (ttft: difference; decode: ratio)")
    print(
        json.dumps(
            {
                "bench": "gateway",
                "runs": args.runs,
                "max_tokens": args.max_tokens,
                "threads": args.threads,
                "baseline_ttft_ms": round(base[0], 2),
                "gateway_ttft_ms": round(gw[0], 2),
                "ttft_diff_ms": round(diff, 2),
                "baseline_decode_tok_s": round(base[1], 2),
                "gateway_decode_tok_s": round(gw[1], 2),
                "decode_ratio": round(ratio, 4),
                "chunks": {name: [r[2] for r in runs] for name, runs in results.items()},
                "failed_runs": {name: len(f) for name, f in failures.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
