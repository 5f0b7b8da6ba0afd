"""`din model publish` and `din model versions` refusing what they cannot do, in one line
(their working path is in tests/node/test_follow.py, against real nodes)."""

from __future__ import annotations

import subprocess
import sys

from dinet.wire.keys import SigningKey


def din(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dinet", *args], capture_output=True, text=True, timeout=120)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    return done.stderr


def test_publishing_a_model_the_store_lacks_is_one_clear_line(tmp_path):
    done = din("model", "publish", "tiny", "ab" * 32, "--home", str(tmp_path), "-b", "/ip4/127.0.0.1/tcp/9")
    assert "no stored model" in one_line_error(done)


def test_publishing_without_a_running_node_or_bootstrap_is_one_clear_line(tmp_path):
    nobody = SigningKey.generate().peer_id
    done = din("model", "versions", "tiny", "--publisher", nobody, "--home", str(tmp_path))
    assert "--bootstrap" in one_line_error(done)


def test_a_publisher_that_is_no_peer_id_is_one_clear_line(tmp_path):
    done = din("model", "versions", "tiny", "--publisher", "alice", "--home", str(tmp_path))
    assert "peer id" in one_line_error(done)


def test_an_unreachable_bootstrap_is_one_clear_line(tmp_path):
    nobody = SigningKey.generate().peer_id
    done = din(
        "model", "versions", "tiny", "--home", str(tmp_path), "-b", f"/ip4/127.0.0.1/tcp/9/p2p/{nobody}"
    )
    assert "bootstrap" in one_line_error(done)
