"""The browser node's own unit tests (web/test/*.test.mjs, node:test), run in the suite."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[2] / "web"


def test_web_unit_tests_pass():
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: `make test` installs it (apt-get install npm)")
    run = subprocess.run(
        [node, "--test", str(WEB / "test")], capture_output=True, text=True, timeout=240, cwd=WEB
    )
    assert run.returncode == 0, f"node --test web/test failed:\n{run.stdout[-4000:]}\n{run.stderr[-2000:]}"
    assert "# pass " in run.stdout and "# pass 0\n" not in run.stdout, run.stdout[-2000:]
