"""Starting real `din gateway` processes for the tests, and waiting for what they know."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

API_KEY = "test-key-0123"
START_TIMEOUT_S = 60.0

# Headless Chromium as the page and browser-node tests launch it (Debian's build, as root).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-extensions",
    "--no-first-run",
]


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()  # its pipe; only the first line was read


def start_gateway(home: Path, args: list[str]) -> GatewayProcess:
    """Start `din gateway --json` on a free loopback port; its first line says where it listens."""
    command = [
        sys.executable,
        "-m",
        "dinet",
        "gateway",
        "--json",
        "-v",
        "--no-mdns",
        "--port",
        "0",
        "--home",
        str(home),
        *args,
    ]
    return start_gateway_command(home, command)


def start_gateway_command(home: Path, command: list[str]) -> GatewayProcess:
    """Start a gateway process whose first line of output is JSON with its `url`."""
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "gateway.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if k != "DINET_API_KEY"},
        )
    line = _first_line(process, START_TIMEOUT_S)
    if not line:
        process.kill()
        process.wait()
        raise RuntimeError(f"gateway did not start; its log ends:\n{log_path.read_text()[-2000:]}")
    return GatewayProcess(process, json.loads(line)["url"], log_path)


def _first_line(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    return box[0] if box else b""


def wait_for_peers(gateway: GatewayProcess, count: int, timeout: float = 45.0) -> list[dict]:
    """The gateway's peer list once it holds `count` peers (AssertionError after `timeout`)."""
    deadline = time.monotonic() + timeout
    peers: list[dict] = []
    while time.monotonic() < deadline:
        reply = httpx.get(f"{gateway.url}/api/network", headers={"authorization": f"Bearer {API_KEY}"})
        peers = reply.json()["peers"]
        if len(peers) >= count:
            return peers
        time.sleep(0.5)
    raise AssertionError(f"the gateway knows {len(peers)} peers after {timeout:g} s, expected {count}")
