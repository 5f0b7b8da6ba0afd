"""The browser node bundled from this checkout's web/ once per session, a real node serving
the default model with its API beside it (`din node --api-port`), and headless Chromium to
open tabs on it."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dinet.node.local_mesh import NodeProcess, start_node

WEB = Path(__file__).resolve().parents[2] / "web"


@dataclass(frozen=True)
class NodeWithApi:
    node: NodeProcess
    url: str  # the gateway beside it, e.g. http://127.0.0.1:8123

    @property
    def model_hash(self) -> str:
        assert self.node.model_hash is not None
        return self.node.model_hash


@pytest.fixture(scope="session")
def browser_bundle(tmp_path_factory) -> Path:
    """web/src bundled into a fresh directory (gateways under test get DINET_BROWSER_DIR=it).

    Always built, never the installed one (sys.prefix/share/dinet/browser): that copy is
    whatever `make` built last, perhaps from another checkout, while esbuild makes this one
    from the sources under test in about a second.
    """
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: `make test` installs it (apt-get install npm)")
    if not (WEB / "node_modules").is_dir():
        pytest.fail("web/node_modules is missing: run `npm ci --prefix web` (`make test` does)")
    out = tmp_path_factory.mktemp("browser")
    subprocess.run([node, str(WEB / "build.mjs"), str(out)], check=True, timeout=120)
    return out


@pytest.fixture(scope="session")
def node_api(browser_bundle, tmp_path_factory) -> Iterator[NodeWithApi]:
    port = _free_port()
    node = start_node(
        tmp_path_factory.mktemp("node"),
        extra_args=["--api-port", str(port)],
        env={"DINET_BROWSER_DIR": str(browser_bundle)},
    )
    try:
        yield NodeWithApi(node, f"http://127.0.0.1:{port}")
    finally:
        node.stop()


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian's chromium is not installed: run `make system-deps` (apt-get install chromium)")
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
