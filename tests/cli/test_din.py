"""The `din` command as a user runs it: real processes, real output, exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from dinet.wire.keys import SigningKey


def din(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dinet", *args], capture_output=True, text=True, timeout=timeout
    )


def test_ask_json_reports_the_answer_and_who_served_it(tmp_path, mesh):
    done = din(
        "ask",
        "--json",
        "--no-mdns",
        "--home",
        str(tmp_path),
        "--max-tokens",
        "12",
        "--bootstrap",
        mesh.bootstrap[0],
        "Name a colour.",
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["text"].strip()
    assert answer["peer_id"] in {n.peer_id for n in mesh.nodes}
    assert answer["model_hash"] == mesh.nodes[0].model_hash
    assert answer["usage"]["completion_tokens"] == 12
    assert answer["usage"]["prompt_tokens"] > 0
    assert answer["ttft_ms"] > 0 and answer["tokens_per_s"] > 0


def test_ask_streams_plain_text_to_a_person(tmp_path, mesh):
    done = din(
        "ask",
        "--no-mdns",
        "--home",
        str(tmp_path),
        "--max-tokens",
        "8",
        "--bootstrap",
        mesh.bootstrap[0],
        "Say hello.",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert "served by" in done.stderr


def test_peers_lists_every_node(tmp_path, mesh):
    done = din(
        "peers",
        "--json",
        "--no-mdns",
        "--home",
        str(tmp_path),
        "--wait",
        "2",
        "--bootstrap",
        mesh.bootstrap[0],
    )
    assert done.returncode == 0, done.stderr
    peers = json.loads(done.stdout)
    assert {p["peer_id"] for p in peers} == {n.peer_id for n in mesh.nodes}
    assert all(p["models"][0]["model_hash"] == mesh.nodes[0].model_hash for p in peers)
    # What each peer found out about itself, and how this client reaches it (on loopback: directly).
    assert all(p["reach"] in ("public", "private", "unknown") and p["link"] == "direct" for p in peers)


def test_peers_table_has_a_reach_column(tmp_path, mesh):
    done = subprocess.run(
        [sys.executable, "-m", "dinet", "peers", "--no-mdns", "--home", str(tmp_path), "--wait", "2"]
        + ["--bootstrap", mesh.bootstrap[0]],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "300"},  # one line per peer
    )
    assert done.returncode == 0, done.stderr
    header = next(line for line in done.stdout.splitlines() if "peer" in line and "region" in line)
    assert "reach" in header
    rows = [line for line in done.stdout.splitlines() if any(n.peer_id in line for n in mesh.nodes)]
    assert len(rows) == len(mesh.nodes)
    assert all(re.search(r"(public|private|unknown), direct", row) for row in rows), rows


def test_peers_through_a_dns_name_in_a_listed_environment_variable(tmp_path, mesh):
    """`DINET_BOOTSTRAP` as an operator writes it: several addresses separated by commas,
    one a host name that resolves (localhost, from /etc/hosts), one that does not."""
    first = mesh.nodes[0]
    port = first.addr.split("/tcp/")[1].split("/")[0]
    listed = (
        f"/dns4/no-such-host.invalid/tcp/4001/p2p/{mesh.nodes[1].peer_id}, "
        f"/dns4/localhost/tcp/{port}/p2p/{first.peer_id}"
    )
    done = subprocess.run(
        [sys.executable, "-m", "dinet", "peers", "--json", "--no-mdns", "--home", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DINET_BOOTSTRAP": listed},
    )
    assert done.returncode == 0, done.stderr
    assert {p["peer_id"] for p in json.loads(done.stdout)} == {n.peer_id for n in mesh.nodes}
    assert "no-such-host.invalid" in done.stderr and "cannot resolve" in done.stderr  # said, not fatal


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_an_unreachable_bootstrap_is_one_clear_line(tmp_path):
    nobody = SigningKey.generate().peer_id
    done = din(
        "ask", "--no-mdns", "--home", str(tmp_path), "--bootstrap", f"/ip4/127.0.0.1/tcp/9/p2p/{nobody}", "hi"
    )
    assert "bootstrap" in one_line_error(done)


def test_a_model_nobody_serves_is_one_clear_line(tmp_path, mesh):
    done = din(
        "ask",
        "--no-mdns",
        "--home",
        str(tmp_path),
        "--model",
        "no-such-model",
        "--timeout",
        "2",
        "--bootstrap",
        mesh.bootstrap[0],
        "hi",
    )
    assert "no-such-model" in one_line_error(done)


def test_a_malformed_bootstrap_address_is_one_clear_line(tmp_path):
    done = din("ask", "--no-mdns", "--home", str(tmp_path), "--bootstrap", "not-an-address", "hi")
    assert "multiaddr" in one_line_error(done)


def test_demo_runs_a_mesh_answers_and_cleans_up(tmp_path):
    before = _demo_node_pids()
    done = din("demo", "--json", "--max-tokens", "16", timeout=240)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["text"].strip() and answer["usage"]["completion_tokens"] > 0
    assert _demo_node_pids() <= before  # every node it started has stopped


def _demo_node_pids() -> set[int]:
    """Node processes whose home is a demo's (other tests' nodes may come and go)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return {
        int(line.split()[0]) for line in out.splitlines() if "dinet node" in line and "dinet-demo-" in line
    }


def test_asking_for_a_model_version_by_hash(tmp_path, mesh):
    """Only peers advertising that exact hash are chosen; an unknown version is refused."""
    wanted = mesh.nodes[0].model_hash
    done = din(
        "ask",
        "--json",
        "--no-mdns",
        "--home",
        str(tmp_path),
        "--max-tokens",
        "4",
        "--model-hash",
        wanted,
        "--bootstrap",
        mesh.bootstrap[0],
        "Say hi.",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model_hash"] == wanted
    missing = "0" * 64
    done = din(
        "ask",
        "--no-mdns",
        "--home",
        str(tmp_path),
        "--model-hash",
        missing,
        "--timeout",
        "2",
        "--bootstrap",
        mesh.bootstrap[0],
        "Say hi.",
    )
    assert missing in one_line_error(done)
