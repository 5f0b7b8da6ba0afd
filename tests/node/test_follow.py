"""`din node --model ID --follow`: a publisher signs version 2 and following nodes switch
to it, while a stream begun on version 1 finishes on version 1 (real processes, the
real model).

Version 2 is the shipped model with the quantized blocks of four tensors rotated by one
block: a real GGUF of the same size whose answers differ, and whose bytes differ in four
chunks only, so a follower pulls those and copies the rest from version 1. (Zeroing
tensors would not do: a pull's sparse file already holds zero chunks.)
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import trio
from tests.helpers import chat, open_infer, raw_host, read_replies

from dinet.models.catalog import DEFAULT_MODEL_ID, resolve_model
from dinet.models.hashing import model_hash
from dinet.node.local_mesh import NodeProcess, child_pids, start_node
from dinet.p2p.discovery import fetch_manifests
from dinet.wire.manifest import verify_manifest
from dinet.wire.messages import EndFrame, GenerationParams, InferRequest, TokenFrame, decode_reply

SWITCH_WITHIN_S = 240.0  # generous: the machine may be shared; the switch itself takes seconds
# The long stream asks more tokens than a newcomer may (probation): this test is about versions.
FOLLOW = ["--follow", "--follow-every-s", "0.5", "--probation-max-tokens", "4096"]
# A raw prompt a small model continues for as long as it may: the stream lasts.
LONG = GenerationParams(prompt="1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", max_tokens=1900)
SHORT = chat("Name three colours of the rainbow.", max_tokens=32)


def derive_version_2(source: Path, target: Path) -> Path:
    import gguf  # only this helper needs it

    shutil.copyfile(source, target)
    reader = gguf.GGUFReader(target)
    names = {f"blk.{i}.ffn_down.weight" for i in (6, 12, 18, 24)}
    spans = [
        (int(t.data_offset), int(t.n_bytes), gguf.GGML_QUANT_SIZES[t.tensor_type][1])
        for t in reader.tensors
        if t.name in names
    ]
    del reader  # release the memory map before writing
    assert len(spans) == len(names)
    with target.open("r+b") as out:
        for offset, size, block in spans:
            out.seek(offset)
            data = out.read(size)
            out.seek(offset)
            out.write(data[block:] + data[:block])  # whole blocks: still valid quantized data
    return target


async def publish(home: Path, model: str, version: str) -> dict:
    done = await trio.run_process(
        [sys.executable, "-m", "dinet", "model", "publish", DEFAULT_MODEL_ID, model]
        + ["--version", version, "--home", str(home), "--json"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def served_hash(node: NodeProcess) -> str:
    return json.loads((node.home / "node.json").read_text())["model_hash"]


async def answer(node: NodeProcess, params: GenerationParams) -> tuple[str, EndFrame]:
    async with raw_host() as me:
        framed = await open_infer(me, node.addr)
        await framed.send(InferRequest(request_id="follow-test", params=params))
        replies = await read_replies(framed, timeout=300)
        await framed.close()
    end = replies[-1]
    assert isinstance(end, EndFrame), end
    return "".join(r.text for r in replies if isinstance(r, TokenFrame)), end


@pytest.fixture
def nodes(tmp_path):
    publisher = start_node(tmp_path / "publisher", extra_args=["--model", DEFAULT_MODEL_ID, *FOLLOW])
    try:
        follower = start_node(
            tmp_path / "follower",
            bootstrap=[publisher.addr],
            extra_args=["--model", str(publisher.model_hash), *FOLLOW],
            start_timeout=180,  # it pulls version 1 from the publisher first
        )
        try:
            yield publisher, follower
        finally:
            follower.stop()
    finally:
        publisher.stop()


async def test_a_follower_switches_to_version_2_and_a_stream_on_version_1_finishes_intact(nodes, tmp_path):
    publisher, follower = nodes
    v1 = str(publisher.model_hash)
    first = await publish(publisher.home, v1, "1")
    assert (first["sequence"], first["versions"][0]["model_hash"]) == (0, v1)
    shipped = resolve_model(None).path
    v2_file = await trio.to_thread.run_sync(derive_version_2, shipped, tmp_path / "v2.gguf")
    v2 = await trio.to_thread.run_sync(model_hash, v2_file)
    short_v1, _ = await answer(follower, SHORT)

    # A long stream on version 1, in flight when version 2 is published.
    async with raw_host() as me:
        stream = await open_infer(me, follower.addr)
        await stream.send(InferRequest(request_id="long", params=LONG))
        replies = [await next_reply(stream)]
        assert isinstance(replies[0], TokenFrame)
        switched_while_streaming = False

        async def publish_and_wait_for_switch() -> None:
            nonlocal switched_while_streaming
            second = await publish(publisher.home, str(v2_file), "2")
            assert second["sequence"] == 1 and [v["model_hash"] for v in second["versions"]] == [v2, v1]
            with trio.fail_after(SWITCH_WITHIN_S):
                while served_hash(follower) != v2 or served_hash(publisher) != v2:
                    await trio.sleep(0.2)
            switched_while_streaming = not isinstance(replies[-1], EndFrame)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_and_wait_for_switch)
            replies += await read_replies(stream, timeout=SWITCH_WITHIN_S + 300)
        await stream.close()

    end = replies[-1]
    tokens = [r for r in replies if isinstance(r, TokenFrame)]
    assert isinstance(end, EndFrame) and end.model_hash == v1  # finished on version 1's engine
    assert switched_while_streaming, "the stream ended before the switch: make it longer"
    assert [t.index for t in tokens] == list(range(len(tokens))) == list(range(end.usage.completion_tokens))
    assert end.finish_reason == "length"

    # New requests go to version 2, a different model; the manifest offers it alone.
    short_v2, end_v2 = await answer(follower, SHORT)
    assert end_v2.model_hash == v2 and short_v2 != short_v1
    async with raw_host() as me:
        signed, _ = await fetch_manifests(me, await me.dial(follower.addr), include_known=False)
    assert [o.model_hash for o in verify_manifest(signed[0]).models] == [v2]

    # Version 1's engine is gone once its stream ended: one worker process is left.
    with trio.fail_after(60):
        while len(child_pids(follower.process.pid)) != 1:
            await trio.sleep(0.2)

    # Anyone can read the record, through any node.
    done = await trio.run_process(
        [sys.executable, "-m", "dinet", "model", "versions", DEFAULT_MODEL_ID, "--json"]
        + ["--publisher", publisher.peer_id, "-b", follower.addr, "--home", str(tmp_path / "reader")],
        capture_stdout=True,
        check=True,
    )
    record = json.loads(done.stdout)
    assert record["sequence"] == 1 and [v["version"] for v in record["versions"]] == ["2", "1"]

    # Only the changed chunks crossed the network.
    pulled = re.search(rf"pulled {v2[:16]}: (\d+) chunks fetched \(\d+ bytes\), (\d+) reused", log(follower))
    assert pulled is not None
    fetched, reused = int(pulled[1]), int(pulled[2])
    assert fetched == 4 and reused == 298  # the four rotated tensors' chunks, of 302


async def next_reply(stream):
    with trio.fail_after(120):
        payload = await stream.receive()
    assert payload is not None
    return decode_reply(payload)


def log(node: NodeProcess) -> str:
    return node.log_path.read_text(errors="replace")
