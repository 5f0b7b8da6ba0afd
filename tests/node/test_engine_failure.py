"""A node whose model cannot be served stays up, says why, and does not crash-loop:
real `din node` processes with files that pass the GGUF checks but fail in the worker."""

from __future__ import annotations

import json
from pathlib import Path

import trio
from tests.helpers import chat, raw_host, request_replies
from tests.models._tiny import write_tiny

from dinet.node.local_mesh import NodeProcess, start_node
from dinet.p2p.discovery import fetch_manifests
from dinet.wire.manifest import verify_manifest
from dinet.wire.messages import ErrorFrame


def engine_of(node: NodeProcess) -> dict:
    return json.loads((node.home / "node.json").read_text())["engine"]


async def offered_models(node: NodeProcess) -> tuple:
    async with raw_host() as host:
        await assert_refused(host, node)
        signed, _ = await fetch_manifests(host, node.peer_id, include_known=False)
    own = [m for m in map(verify_manifest, signed) if m.peer_id == node.peer_id]
    assert len(own) == 1
    return own[0].models


async def assert_refused(host, node: NodeProcess) -> None:
    """Ask for an answer: the node must refuse in one error frame, naming the reason."""
    replies = await request_replies(host, node.addr, chat("Hi", max_tokens=4))
    assert len(replies) == 1 and isinstance(replies[0], ErrorFrame), replies
    assert replies[0].code == "unknown_model" and "unavailable" in replies[0].message


async def test_a_model_llama_cpp_refuses_leaves_the_node_up_and_not_offering_it(tmp_path: Path) -> None:
    # A valid GGUF layout (it passes the header gate) that is no loadable llama model.
    model = write_tiny(tmp_path / "tiny.gguf")
    node = start_node(tmp_path / "node", extra_args=["--model", str(model)])
    try:
        engine = engine_of(node)
        assert engine["serving"] is False and "could not start" in engine["error"]
        assert engine["restarts"] == 0  # llama.cpp said no: retrying would not change its mind
        with trio.fail_after(30):
            assert await offered_models(node) == ()
        assert node.process.poll() is None  # still running, still reachable
    finally:
        node.stop()


async def test_a_worker_dying_at_load_is_retried_with_backoff_then_given_up(tmp_path: Path) -> None:
    # Under a 100 MB address-space limit the worker dies while loading, every time.
    node = start_node(
        tmp_path / "node", extra_args=["--memory-mb", "100"],
        env={"DINET_ENGINE_RESTARTS": "2", "DINET_ENGINE_BACKOFF_S": "0.1"},
    )  # fmt: skip
    try:
        engine = engine_of(node)
        assert engine["serving"] is False
        assert "gave up after 3 failures in a row" in engine["error"]
        assert "memory limit of 100 MB" in engine["error"]
        assert engine["restarts"] == 2  # bounded: three workers in all, then none
        log = (node.home / "worker.log").read_text(errors="replace")
        assert log.count("OpenBLAS error") + log.count("could not load") == 3
        with trio.fail_after(30):
            assert await offered_models(node) == ()
        assert node.process.poll() is None
    finally:
        node.stop()
