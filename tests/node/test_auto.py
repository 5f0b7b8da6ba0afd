"""`din node --serve auto`: supply follows demand (real processes, the real model).

A node serves model A, another model B (the shipped model with four tensors rotated: a
real GGUF with another hash, see tests/node/test_follow.py), with one slot and no queue.
An auto node may serve either. Clients flood B's node: it refuses most of them busy, its
demand records say so on B's topic, and the idle auto node pulls B and serves it. When
the clients stop, nobody asks for B and the auto node serves nothing again.
"""

from __future__ import annotations

import json

import pytest
import trio
from pydantic import ValidationError
from tests.helpers import chat, open_infer, raw_host, read_replies
from tests.node.test_follow import derive_version_2

from dinet.config import NodeSettings
from dinet.errors import PeerError
from dinet.models.catalog import DEFAULT_MODEL_ID, resolve_model
from dinet.models.hashing import model_hash
from dinet.node.auto import within_budget
from dinet.node.local_mesh import NodeProcess, start_node
from dinet.p2p.discovery import fetch_manifests
from dinet.wire.manifest import verify_manifest
from dinet.wire.messages import EndFrame, ErrorFrame, InferRequest

SERVES_WITHIN_S = 120.0  # generous for a shared machine: a decision a second, a 100 MB pull on loopback
STOPS_WITHIN_S = 90.0  # the idle timeout (10 s), then the node file's next rewrite
PERIODS = ["--demand-every-s", "1"]
AUTO = [
    "--serve",
    "auto",
    "--auto-every-s",
    "1",
    "--auto-dwell-s",
    "5",
    "--auto-idle-after-s",
    "10",
    "--auto-disk-mb",
    "500",
    "--auto-memory-mb",
    "500",
    *PERIODS,
]
QUESTION = chat("Name three colours of the rainbow.", max_tokens=16)


async def offered(node: NodeProcess) -> list[str]:
    """The models `node`'s manifest offers, as a client reads them."""
    async with raw_host() as me:
        signed, _ = await fetch_manifests(me, await me.dial(node.addr), include_known=False)
    return [o.model_hash for o in verify_manifest(signed[0]).models]


def served_hash(node: NodeProcess) -> str | None:
    return json.loads((node.home / "node.json").read_text())["model_hash"]


async def ask(node: NodeProcess, model: str, request_id: str) -> EndFrame | ErrorFrame:
    """One question for `model` to `node`: its end frame, or the error frame it refused with."""
    async with raw_host() as me:
        framed = await open_infer(me, node.addr)
        await framed.send(InferRequest(request_id=request_id, model_hash=model, params=QUESTION))
        replies = await read_replies(framed, timeout=120)
        await framed.close()
    last = replies[-1]
    assert isinstance(last, EndFrame | ErrorFrame), last
    return last


@pytest.fixture
def network(tmp_path):
    b_file = derive_version_2(resolve_model(None).path, tmp_path / "model-b.gguf")
    model_b = model_hash(b_file)
    started: list[NodeProcess] = []
    try:
        a = start_node(tmp_path / "a", extra_args=["--model", DEFAULT_MODEL_ID, *PERIODS])
        started.append(a)
        b = start_node(
            tmp_path / "b",
            bootstrap=[a.addr],
            extra_args=["--model", str(b_file), "--max-concurrent", "1", "--max-queue", "0", *PERIODS],
        )
        started.append(b)
        assert (a.model_hash, b.model_hash) != (model_b, model_b) and b.model_hash == model_b
        auto = start_node(
            tmp_path / "auto",
            bootstrap=[a.addr, b.addr],
            extra_args=[*AUTO, "--auto-models", f"{DEFAULT_MODEL_ID},{model_b}"],
        )
        started.append(auto)
        yield a, b, auto
    finally:
        for node in reversed(started):
            node.stop()


async def test_an_idle_auto_node_serves_a_model_in_demand_and_stops_when_demand_goes(network):
    a, b, auto = network
    assert auto.model_hash is None  # nobody has asked for anything yet
    model_b = str(b.model_hash)
    refused = 0

    async def flood(stop: trio.Event) -> None:
        """Three clients at once, again and again: B's one slot refuses two of them."""
        nonlocal refused
        count = 0

        async def one() -> None:
            nonlocal refused, count
            count += 1
            try:
                last = await ask(b, model_b, f"flood-{count}")
            except PeerError:
                return  # the flood's own streams may be dropped: it is only there to load B
            refused += isinstance(last, ErrorFrame) and last.code == "busy"

        while not stop.is_set():
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(one)

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood, stop)
        with trio.fail_after(SERVES_WITHIN_S):
            while served_hash(auto) != model_b:
                await trio.sleep(0.5)
        stop.set()
    assert refused > 0  # B's node was busy: that is the demand the auto node followed

    # The auto node answers questions for B itself now.
    end = await ask(auto, model_b, "to-auto")
    assert isinstance(end, EndFrame) and end.model_hash == model_b
    assert await offered(auto) == [model_b]
    assert served_hash(a) == a.model_hash  # the servers of the models stay as they were

    # Nobody asks any more: after the idle timeout the auto node serves nothing.
    with trio.fail_after(STOPS_WITHIN_S):
        while served_hash(auto) is not None:
            await trio.sleep(0.5)
    assert await offered(auto) == []  # so no client sends it a question
    log = auto.log_path.read_text(errors="replace")
    assert f"auto: serve {model_b[:16]}" in log and "auto: serve nothing" in log


def test_a_model_larger_than_either_budget_is_never_a_candidate():
    settings = NodeSettings(serve="auto", auto_models=["m"], auto_disk_mb=100, auto_memory_mb=50)
    assert within_budget(40 << 20, settings)
    assert not within_budget(60 << 20, settings)  # over the memory budget
    assert within_budget(10**12, NodeSettings(serve="auto", auto_models=["m"]))  # no budgets given


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"serve": "auto"}, "needs --auto-models"),
        ({"serve": "auto", "auto_models": ["m"], "model": "x"}, "takes no --model"),
        ({"serve": "auto", "auto_models": ["m"], "follow": True}, "takes no --follow"),
        ({"auto_models": ["m"]}, "is for --serve auto"),
        ({"serve": "sometimes"}, "'model' or 'auto'"),
    ],
)
def test_serve_auto_settings_that_contradict_each_other_are_refused(fields, complaint):
    with pytest.raises(ValidationError, match=complaint):
        NodeSettings(**fields)
