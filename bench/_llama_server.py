"""Upstream `llama-server` (llama.cpp's own HTTP server) as a benchmark baseline.

Built once per llama-cpp-python version from the llama.cpp sources vendored in that
version's sdist, so the baseline runs the same llama.cpp as dinet's engine, and cached in
`~/.cache/dinet/llama-server-<version>/llama-server` (a static binary: nothing else
in that directory is needed). The build takes several minutes on 2 cores.

    .venv/bin/python bench/_llama_server.py [--threads 2]   # build if needed, one smoke request
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.metadata
import logging
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

logger = logging.getLogger(__name__)

DIST = "llama-cpp-python"

# Options of the llama.cpp vendored by llama-cpp-python 0.3.36 (llama.cpp 0.5.0-dev):
# - GGML_NATIVE=ON: -march=native, as llama-cpp-python's own pip build (its default);
# - BUILD_SHARED_LIBS=OFF: one self-contained binary that can be moved out of the build tree;
# - LLAMA_BUILD_TOOLS/SERVER=ON: llama-server lives in tools/server and needs both;
# - LLAMA_USE_PREBUILT_UI=OFF, LLAMA_BUILD_UI=OFF: no web UI (the build would otherwise try
#   to download its assets from Hugging Face, or run npm);
# - LLAMA_OPENSSL=OFF: the server only speaks plain HTTP on loopback here;
# - LLAMA_BUILD_TESTS/EXAMPLES/APP=OFF: nothing else is configured;
# - GGML_CCACHE=OFF: a one-off build gains nothing from ccache (and it warns when absent).
# LLAMA_CURL no longer exists in this llama.cpp (it only warns that it is ignored).
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DGGML_CCACHE=OFF",
)
BUILD_JOBS = 2


class LlamaServerError(RuntimeError):
    """llama-server could not be built or did not start."""


def cache_dir(version: str | None = None) -> Path:
    version = version or importlib.metadata.version(DIST)
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "dinet" / f"llama-server-{version}"


def build_llama_server() -> Path:
    """The path of a `llama-server` binary, built (once) from the installed
    llama-cpp-python's sdist if it is not in the cache yet."""
    version = importlib.metadata.version(DIST)
    target = cache_dir(version) / "llama-server"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # One build at a time; whoever waited finds the binary already there.
    with (target.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_file():
            _build(version, target)
    return target


def _build(version: str, target: Path) -> None:
    _check_tools()
    with tempfile.TemporaryDirectory(prefix="llama-server-build-") as scratch_name:
        scratch = Path(scratch_name)
        log = scratch / "build.log"
        started = time.monotonic()
        logger.info("building llama-server from %s %s (several minutes); log: %s", DIST, version, log)
        _run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
            + ["--dest", str(scratch), f"{DIST}=={version}"],
            log,
        )
        (sdist,) = scratch.glob("*.tar.gz")
        source = _unpack_llama_cpp(sdist, scratch / "src")
        build = scratch / "build"
        _run(["cmake", "-S", str(source), "-B", str(build), *CMAKE_OPTIONS], log)
        _run(["cmake", "--build", str(build), "--target", "llama-server", f"-j{BUILD_JOBS}"], log)
        # Copy next to the target, then rename: the target is either absent or whole.
        partial = target.with_name(f".llama-server.{os.getpid()}.partial")
        shutil.copy2(build / "bin" / "llama-server", partial)
        os.replace(partial, target)
        logger.info("built %s in %.0f s", target, time.monotonic() - started)


def _check_tools() -> None:
    missing = {
        tool: package
        for tool, package in (("cmake", "cmake"), ("cc", "gcc"), ("c++", "g++"), ("make", "make"))
        if shutil.which(tool) is None
    }
    if missing:
        raise LlamaServerError(
            f"building llama-server needs {', '.join(missing)}; install them with: "
            f"apt-get install -y {' '.join(sorted(set(missing.values())))}"
        )


def _unpack_llama_cpp(sdist: Path, dest: Path) -> Path:
    """Extract only vendor/llama.cpp from the sdist; return its directory."""
    with tarfile.open(sdist) as archive:
        (top,) = {name.split("/", 1)[0] for name in archive.getnames()}
        prefix = f"{top}/vendor/llama.cpp/"
        members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
        if not members:
            raise LlamaServerError(f"{sdist.name} holds no vendor/llama.cpp")
        archive.extractall(dest, members=members, filter="data")
    return dest / prefix


def _run(args: list[str], log: Path) -> None:
    with log.open("ab") as out:
        out.write(f"$ {' '.join(args)}\n".encode())
        out.flush()
        result = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise LlamaServerError(f"{args[0]} {args[1]} ... failed ({result.returncode}):\n{_tail(log)}")


def _tail(log: Path, size: int = 4000) -> str:
    text = log.read_text(errors="replace") if log.is_file() else ""
    return text[-size:]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cpu_has_amx() -> bool:
    # The check dinet's engine makes before it turns weight repacking off (the AMX path
    # of this llama.cpp segfaults); imported late: it loads llama_cpp.
    from dinet.engine.llama._llama_cpp import cpu_has_amx

    return cpu_has_amx()


@contextlib.contextmanager
def running_llama_server(
    model: Path,
    *,
    threads: int,
    ctx: int,
    parallel: int,
    cache_prompt: bool = True,
    binary: Path | None = None,
    timeout: float = 120,
) -> Iterator[str]:
    """Run llama-server on a free loopback port; yield its base URL once /health is 200.

    `ctx` is per slot: the server gets `-c ctx*parallel -np parallel` and splits the KV
    cache evenly between its `parallel` slots. With `cache_prompt=False` the server
    reuses no KV cache between requests (`--no-cache-prompt`, which a request's own
    `cache_prompt: true` would turn back on for that request) and keeps no prompt cache
    in RAM (`--cache-ram 0`).
    """
    binary = binary or build_llama_server()
    port = _free_port()
    args = [
        str(binary),
        "-m",
        str(model),
        "-t",
        str(threads),
        "-c",
        str(ctx * parallel),
        "-np",
        str(parallel),
        "--cont-batching",
        "--no-webui",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if not cache_prompt:
        args += ["--no-cache-prompt", "--cache-ram", "0"]
    if _cpu_has_amx():
        args.append("--no-repack")
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="llama-server-") as log_dir:
        log = Path(log_dir) / "llama-server.log"
        with log.open("wb") as out:
            process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            _wait_healthy(url, process, log, timeout)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LlamaServerError(f"llama-server exited with {process.returncode}; its log:\n{_tail(log)}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.2)
    raise LlamaServerError(f"llama-server not healthy after {timeout:g} s; its log:\n{_tail(log)}")


def main() -> None:
    from dinet.engine import default_model_path

    parser = argparse.ArgumentParser(description="Build llama-server if needed and ask it one question.")
    parser.add_argument("--threads", type=int, default=2)
    threads = parser.parse_args().threads
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per /health poll
    started = time.monotonic()
    binary = build_llama_server()
    print(f"llama-server: {binary} (ready in {time.monotonic() - started:.1f} s)")
    model = default_model_path()
    with running_llama_server(model, threads=threads, ctx=2048, parallel=1, binary=binary) as url:
        body = {
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 8,
            "temperature": 0,
        }
        start = time.perf_counter()
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
        elapsed = time.perf_counter() - start
        response.raise_for_status()
        answer = response.json()["choices"][0]["message"]["content"]
    print(f"{url}: {answer!r} in {elapsed * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
