"""For the browser benches: a real node serving the default model with its gateway beside
it, serving the browser node bundled from this checkout's web/ (built into `tmp`)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dinet.node.local_mesh import NodeProcess, start_node

WEB = Path(__file__).resolve().parents[1] / "web"


@contextmanager
def node_for_tabs(tmp: Path) -> Iterator[tuple[NodeProcess, str]]:
    """The node and its gateway's URL, stopped afterwards."""
    bundle = tmp / "browser"
    subprocess.run(["node", str(WEB / "build.mjs"), str(bundle)], check=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    node = start_node(
        tmp / "node", extra_args=["--api-port", str(port)], env={"DINET_BROWSER_DIR": str(bundle)}
    )
    try:
        yield node, f"http://127.0.0.1:{port}"
    finally:
        node.stop()
