"""The real 98 MB model between real `din node` processes: multi-peer pull, resume
after kill -9, a fresh node that pulls before serving, and self-healing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import torch
import trio
from tests.helpers import chat, raw_host, request_replies

from dinet.engine import default_model_path
from dinet.engine.torch.shard import ShardModel
from dinet.models._gguf import read_layout
from dinet.models.hashing import file_sha256
from dinet.models.layers import LayerSpan, stage_chunks
from dinet.models.store import ModelStore
from dinet.node.local_mesh import start_node
from dinet.wire.messages import EndFrame


def pull_args(home, mesh, *extra: str) -> list[str]:
    model_hash = mesh.nodes[0].model_hash
    args = [sys.executable, "-m", "dinet", "model", "pull", model_hash, "--json", "--no-mdns"]
    args += ["--home", str(home)]
    for addr in mesh.bootstrap[:1]:
        args += ["--bootstrap", addr]
    return args + list(extra)


def test_pull_from_several_peers_gives_the_exact_file(tmp_path, mesh):
    done = subprocess.run(pull_args(tmp_path, mesh), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["fetched_chunks"] == report["total_chunks"] == 302
    serving = [p for p, s in report["peers"].items() if s["chunks"] > 0]
    assert len(serving) >= 2 and set(serving) <= {n.peer_id for n in mesh.nodes}
    stored = ModelStore(tmp_path).find(mesh.nodes[0].model_hash)
    assert file_sha256(stored.path) == stored.card.sha256


def test_a_pull_killed_mid_way_resumes_without_fetching_verified_chunks_again(tmp_path, mesh):
    with subprocess.Popen(
        pull_args(tmp_path, mesh, "--max-rate", "20"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:  # leaving it closes the pipes
        assert process.stderr is not None
        for line in process.stderr:
            event = json.loads(line) if line.startswith("{") else None
            if event is not None and event["done_bytes"] >= 0.3 * event["total_bytes"]:
                break
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert event is not None, "the pull ended before it was 30% done"
    done = subprocess.run(pull_args(tmp_path, mesh), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    total = event["total_bytes"]
    assert report["reused_chunks"] > 0 and total - report["fetched_bytes"] >= 0.3 * total
    assert report["fetched_chunks"] == report["total_chunks"] - report["reused_chunks"]
    stored = ModelStore(tmp_path).find(mesh.nodes[0].model_hash)
    assert file_sha256(stored.path) == stored.card.sha256


def test_a_stage_pulls_only_its_blocks_computes_as_the_whole_file_and_widens_later(tmp_path, mesh):
    done = subprocess.run(
        pull_args(tmp_path, mesh, "--layers", "10:20"), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    stored = ModelStore(tmp_path).find(mesh.nodes[0].model_hash, complete=False)
    card, whole = stored.card, default_model_path()
    middle = stage_chunks(card, read_layout(whole), 10, 20)
    assert stored.layers == (10, 20) and list(stored.held) == middle and not stored.complete
    assert report["fetched_chunks"] == report["total_chunks"] == len(middle) < len(card.chunk_sizes)
    assert report["fetched_bytes"] == sum(card.chunk_sizes[i] for i in middle) < 0.3 * card.file_size
    assert stored.part_path.stat().st_blocks * 512 <= report["fetched_bytes"] + len(middle) * 2 * 4096
    # The held blocks compute exactly what they compute in the whole file.
    hidden = torch.randn(3, 576, generator=torch.Generator().manual_seed(1))
    outputs = [
        ShardModel.load(path, LayerSpan(10, 20)).new_session().forward(hidden)
        for path in (whole, stored.part_path)
    ]
    assert torch.equal(*outputs)
    # Widened to the end: only the new blocks' chunks and the head are fetched.
    done = subprocess.run(
        pull_args(tmp_path, mesh, "--layers", "20:30"), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    wider = stage_chunks(card, read_layout(whole), 10, 30)
    assert ModelStore(tmp_path).find(card.model_hash, complete=False).layers == (10, 30)
    assert report["total_chunks"] == len(wider) and report["reused_chunks"] == len(middle)
    assert report["fetched_chunks"] == len(set(wider) - set(middle))
    verified = subprocess.run(
        [
            sys.executable,
            "-m",
            "dinet",
            "model",
            "verify",
            card.model_hash,
            "--home",
            str(tmp_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0 and json.loads(verified.stdout)[0]["bad_chunks"] == []


def test_a_stage_span_beyond_the_model_is_refused_before_any_chunk(tmp_path, mesh):
    done = subprocess.run(
        pull_args(tmp_path, mesh, "--layers", "20:31"), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and "do not fit" in done.stderr
    assert not list(tmp_path.glob("models/*/model.gguf*"))


@pytest.fixture(scope="module")
def fresh_node(tmp_path_factory, mesh):
    """A node started with an empty home and only the model's hash: it pulls, then serves."""
    node = start_node(
        tmp_path_factory.mktemp("fresh"),
        bootstrap=mesh.bootstrap[:1],
        extra_args=["--model", mesh.nodes[0].model_hash],
        env={"DINET_SCRUB_MB_S": "100"},
    )
    yield node
    node.stop()


async def test_a_fresh_node_pulls_the_model_then_serves_it(fresh_node, mesh):
    assert fresh_node.model_hash == mesh.nodes[0].model_hash
    stored = ModelStore(fresh_node.home).find(fresh_node.model_hash)
    assert file_sha256(stored.path) == stored.card.sha256
    async with raw_host() as host:
        replies = await request_replies(host, fresh_node.addr, chat("Say hi.", max_tokens=4))
    assert isinstance(replies[-1], EndFrame) and replies[-1].model_hash == fresh_node.model_hash


async def test_a_corrupted_chunk_is_detected_refetched_and_service_resumes(fresh_node):
    store = ModelStore(fresh_node.home)
    stored = store.find(fresh_node.model_hash)
    with stored.path.open("r+b") as f:  # flip bytes in the middle of chunk 150
        f.seek(sum(stored.card.chunk_sizes[:150]) + 1000)
        f.write(b"\xde\xad\xbe\xef" * 4)
    with trio.fail_after(90):
        while "repaired: back in service" not in fresh_node.log_path.read_text(errors="replace"):
            await trio.sleep(0.5)
    log = fresh_node.log_path.read_text(errors="replace")
    assert "chunk 150 of" in log and "out of service until repaired" in log
    assert store.bad_chunks(stored) == []
    async with raw_host() as host:
        replies = await request_replies(host, fresh_node.addr, chat("Say hi.", max_tokens=4))
    assert isinstance(replies[-1], EndFrame)
