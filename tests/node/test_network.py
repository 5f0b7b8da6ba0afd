"""A prompt through a mesh of real node processes, and how nodes treat bad input."""

from __future__ import annotations

import os
import signal
import struct

import pytest
import trio
from tests.helpers import answer_to, chat, open_infer, raw_host, read_replies, request_replies, worker_pids

from dinet.client.network import open_network
from dinet.engine import default_model_path
from dinet.engine.llama._llama_cpp import load_llama
from dinet.wire.messages import EndFrame, ErrorFrame, TokenFrame

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about rivers.",
    "List three prime numbers.",
]


@pytest.fixture(scope="module")
def in_process_answers():
    """What llama-cpp-python itself answers, greedy, in this process."""
    llm = load_llama(default_model_path(), threads=2)
    answers = {}
    for prompt in PROMPTS:
        result = llm.create_chat_completion(
            messages=[{"role": "user", "content": prompt}],
            max_tokens=48,
            temperature=0.0,
            top_k=1,
            top_p=1.0,
            min_p=0.0,
            repeat_penalty=1.0,
        )
        answers[prompt] = result["choices"][0]["message"]["content"]
    return answers


async def test_answers_through_the_mesh_equal_llama_cpp_in_process(client_settings, mesh, in_process_answers):
    async with open_network(client_settings) as network:
        for prompt in PROMPTS:
            text, answer = await answer_to(network, chat(prompt, max_tokens=48))
            assert text == answer.text == in_process_answers[prompt]
            assert answer.peer_id in {n.peer_id for n in mesh.nodes}
            assert answer.model_hash == mesh.nodes[0].model_hash
            assert answer.usage.completion_tokens > 0


async def test_the_client_discovers_every_node_through_one_bootstrap(client_settings, mesh):
    async with open_network(client_settings) as network:
        found = await network.discover(None, None, timeout=20, want=3)
        assert {p.peer_id for p in found} == {n.peer_id for n in mesh.nodes}


async def test_an_unknown_model_is_refused_with_an_error_frame(mesh):
    async with raw_host() as host:
        framed = await open_infer(host, mesh.nodes[0].addr)
        from dinet.wire.messages import InferRequest

        await framed.send(InferRequest(request_id="x", model_id="no-such-model", params=chat("hi")))
        replies = await read_replies(framed)
        assert isinstance(replies[-1], ErrorFrame) and replies[-1].code == "unknown_model"


@pytest.mark.parametrize(
    "raw, code",
    [
        (struct.pack(">I", 9) + b"not json!", "bad_request"),
        (struct.pack(">I", 27) + b'{"kind":"infer","zzz":true}', "bad_request"),
        (struct.pack(">I", 50_000_000), "too_large"),
    ],
)
async def test_bad_frames_get_an_error_frame_and_the_node_keeps_serving(mesh, raw, code):
    node = mesh.nodes[1]
    async with raw_host() as host:
        framed = await open_infer(host, node.addr)
        await framed.stream.write(raw)
        replies = await read_replies(framed)
        assert len(replies) == 1 and isinstance(replies[0], ErrorFrame)
        assert replies[0].code == code
        good = await request_replies(host, node.addr, chat("Say hi.", max_tokens=4))
        assert isinstance(good[-1], EndFrame)


async def test_a_truncated_frame_closes_the_stream_and_the_node_keeps_serving(mesh):
    node = mesh.nodes[1]
    async with raw_host() as host:
        framed = await open_infer(host, node.addr)
        await framed.stream.write(struct.pack(">I", 100) + b'{"kind":')
        await framed.stream.close()  # half-close: the node sees the frame end early
        replies = await read_replies(framed)
        assert all(isinstance(r, ErrorFrame) for r in replies)
        good = await request_replies(host, node.addr, chat("Say hi.", max_tokens=4))
        assert isinstance(good[-1], EndFrame)


async def test_a_killed_worker_gives_an_error_frame_and_is_restarted(mesh):
    node = mesh.nodes[2]
    async with raw_host() as host:
        framed = await open_infer(host, node.addr)
        from dinet.wire.messages import InferRequest

        await framed.send(InferRequest(request_id="k", params=chat("Tell a long story.", max_tokens=400)))
        first = await framed.receive()
        assert first is not None
        (worker,) = worker_pids(node.process.pid)
        os.kill(worker, signal.SIGKILL)
        replies = await read_replies(framed)
        assert isinstance(replies[-1], ErrorFrame) and replies[-1].code == "engine_crashed"
        with trio.fail_after(60):
            good = await request_replies(host, node.addr, chat("Say hi.", max_tokens=4))
        assert isinstance(good[-1], EndFrame)
        assert worker not in worker_pids(node.process.pid)
        assert isinstance(good[0], TokenFrame)
