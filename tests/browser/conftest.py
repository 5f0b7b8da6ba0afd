"""The browser node's bundle, built from this checkout's web/ once per session."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[2] / "web"


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
