"""One `din node` process serving two models (`--also-serve`): SmolLM2 (chat) and Gemma 3
270M (raw prompts), each in its own engine worker, each request passed to the model it
names, each answer llama.cpp's own greedy one; both offered in the one signed manifest;
a model the node does not serve refused as on any node."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import openai
import pytest
import trio
from pydantic import ValidationError
from tests.gateway._gateway_helpers import API_KEY, start_gateway, wait_for_peers
from tests.helpers import answer_to, chat, open_stream, raw_host, read_replies, worker_pids

from dinet.client.network import open_network
from dinet.client.verify import verify_answer
from dinet.config import ClientSettings, NodeSettings
from dinet.engine import default_model_path, gemma_model_path
from dinet.models.catalog import DEFAULT_MODEL_ID, GEMMA_MODEL_ID
from dinet.node.local_mesh import NodeProcess, start_node
from dinet.wire.ids import INFER_PROTOCOL, VERIFY_PROTOCOL, ModelHash
from dinet.wire.messages import ErrorFrame, GenerationParams, InferRequest, decode_reply
from dinet.wire.verify import VerifyRequest

QUESTION = "What is the capital of France?"
PROMPT = "The capital of France is"
MAX_TOKENS = 16
GREEDY = {"temperature": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0}
START_S = 240.0  # two engines, each with its BF16 scoring copy made before it serves
UNSERVED = ModelHash("ab" * 32)


@pytest.fixture(scope="module")
def expected() -> dict[str, str]:
    """llama-cpp-python's own greedy answers, in this process: SmolLM2's chat, Gemma's
    raw completion."""
    from dinet.engine.llama._llama_cpp import load_llama

    smol = load_llama(default_model_path(), threads=1)
    try:
        reply = smol.create_chat_completion(
            [{"role": "user", "content": QUESTION}], max_tokens=MAX_TOKENS, **GREEDY
        )
    finally:
        smol.close()
    gemma = load_llama(gemma_model_path(), threads=1)
    try:
        completion = gemma.create_completion(PROMPT, max_tokens=MAX_TOKENS, **GREEDY)
    finally:
        gemma.close()
    return {
        DEFAULT_MODEL_ID: reply["choices"][0]["message"]["content"],  # type: ignore[index]
        GEMMA_MODEL_ID: completion["choices"][0]["text"],  # type: ignore[index]
    }


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[NodeProcess]:
    """The default model (SmolLM2) and, beside it, Gemma, on one llama.cpp thread each."""
    root = tmp_path_factory.mktemp("also-serve")
    started = start_node(
        root / "node", extra_args=["--also-serve", str(gemma_model_path())], start_timeout=START_S
    )
    try:
        yield started
    finally:
        started.stop()


def gemma_hash(node: NodeProcess) -> ModelHash:
    (also,) = node.printed["also_served"]
    assert also["model_id"] == GEMMA_MODEL_ID and also["engine"]["serving"], also
    return ModelHash(also["model_hash"])


def smol(max_tokens: int = MAX_TOKENS) -> GenerationParams:
    return chat(QUESTION, max_tokens=max_tokens)


def raw() -> GenerationParams:
    return GenerationParams(prompt=PROMPT, max_tokens=MAX_TOKENS)


async def test_the_one_node_answers_each_model_with_llama_cpps_greedy_tokens(tmp_path, node, expected):
    gemma = gemma_hash(node)
    assert node.model_id == DEFAULT_MODEL_ID and len(worker_pids(node.process.pid)) == 2
    async with open_network(ClientSettings(home=tmp_path, bootstrap=[node.addr], mdns=False)) as network:
        with trio.fail_after(30):
            while not network.candidates(GEMMA_MODEL_ID, None):
                await trio.sleep(0.2)
        (peer,) = network.directory.manifests()
        _, chatted = await answer_to(network, smol())  # no model named: the node's first
        _, by_id = await answer_to(network, raw(), model_id=GEMMA_MODEL_ID)
        _, by_hash = await answer_to(network, raw(), model_hash=gemma)
    assert chatted.text == expected[DEFAULT_MODEL_ID]
    assert (chatted.model_id, chatted.model_hash) == (DEFAULT_MODEL_ID, node.model_hash)
    for answer in (by_id, by_hash):
        assert answer.text == expected[GEMMA_MODEL_ID]
        assert (answer.model_id, answer.model_hash) == (GEMMA_MODEL_ID, gemma)
        assert answer.usage.completion_tokens == MAX_TOKENS
    assert {chatted.peer_id, by_id.peer_id, by_hash.peer_id} == {node.peer_id}
    # One signed manifest, two whole offers: SmolLM2's 30 blocks and Gemma's 18.
    assert {(o.model_id, o.model_hash, o.layers) for o in peer.models} == {
        (DEFAULT_MODEL_ID, node.model_hash, (0, 30)),
        (GEMMA_MODEL_ID, gemma, (0, 18)),
    }


async def test_each_model_verifies_claims_on_its_own_weights(tmp_path, node, expected):
    gemma = gemma_hash(node)
    async with open_network(ClientSettings(home=tmp_path, bootstrap=[node.addr], mdns=False)) as network:
        with trio.fail_after(30):
            while not network.candidates(GEMMA_MODEL_ID, None):
                await trio.sleep(0.2)
        for params, model_hash in ((smol(), node.model_hash), (raw(), gemma)):
            _, answer = await answer_to(network, params, model_hash=model_hash)
            tokens = list(answer.token_ids)
            honest = await verify_answer(network, params, tokens, model_hash)
            tokens[3] = (tokens[3] + 4321) % 49_152  # within both vocabularies
            tampered = await verify_answer(network, params, tokens, model_hash)
            assert honest.verified is True and honest.verifier == node.peer_id, honest
            assert tampered.verified is False and 3 in tampered.bad_positions, tampered


def test_din_ask_and_din_peers_see_both_models_on_the_one_node(tmp_path, node, expected):
    common = ["--json", "--no-mdns", "--home", str(tmp_path), "--bootstrap", node.addr]
    chatted = din("ask", *common, "--max-tokens", str(MAX_TOKENS), QUESTION)
    completed = din(
        "ask", *common, "--raw", "--model", GEMMA_MODEL_ID, "--max-tokens", str(MAX_TOKENS), PROMPT
    )
    for done in (chatted, completed):
        assert done.returncode == 0, done.stderr
    assert json.loads(chatted.stdout)["text"] == expected[DEFAULT_MODEL_ID]
    assert json.loads(completed.stdout)["text"] == expected[GEMMA_MODEL_ID]
    listed = din("peers", *common)
    assert listed.returncode == 0, listed.stderr
    (peer,) = json.loads(listed.stdout)
    offers = {(o["model_id"], o["model_hash"]) for o in peer["models"]}
    assert offers == {(DEFAULT_MODEL_ID, node.model_hash), (GEMMA_MODEL_ID, gemma_hash(node))}


def test_a_gateway_lists_both_models_and_answers_each_on_its_api(tmp_path, node, expected):
    gateway = start_gateway(tmp_path, ["--bootstrap", node.addr, "--api-key", API_KEY])
    try:
        wait_for_peers(gateway, 1)
        client = openai.OpenAI(base_url=gateway.base_url, api_key=API_KEY, max_retries=0, timeout=120)
        listed = {m.id for m in client.models.list()}
        chatted = client.chat.completions.create(
            model=DEFAULT_MODEL_ID,
            messages=[{"role": "user", "content": QUESTION}],
            temperature=0,
            max_tokens=MAX_TOKENS,
        )
        completed = client.completions.create(
            model=GEMMA_MODEL_ID, prompt=PROMPT, temperature=0, max_tokens=MAX_TOKENS
        )
        with pytest.raises(openai.BadRequestError) as no_template:  # a base model: no chat
            client.chat.completions.create(
                model=GEMMA_MODEL_ID, messages=[{"role": "user", "content": QUESTION}], max_tokens=4
            )
    finally:
        gateway.stop()
    assert listed == {DEFAULT_MODEL_ID, GEMMA_MODEL_ID}
    assert chatted.choices[0].message.content == expected[DEFAULT_MODEL_ID]
    assert completed.choices[0].text == expected[GEMMA_MODEL_ID]
    assert "chat template" in str(no_template.value), no_template.value


async def test_a_model_the_node_does_not_serve_is_refused_on_both_protocols(node):
    async with raw_host() as host:
        infer = await open_stream(host, node.addr, INFER_PROTOCOL)
        await infer.send(InferRequest(request_id="x", model_hash=UNSERVED, params=smol(4)))
        (refused,) = await read_replies(infer)
        await infer.close()
        verify = await open_stream(host, node.addr, VERIFY_PROTOCOL)
        await verify.send(VerifyRequest(request_id="y", model_hash=UNSERVED, params=smol(4), tokens=(1, 2)))
        with trio.fail_after(30):
            payload = await verify.receive()
        await verify.close()
    assert payload is not None
    for frame in (refused, decode_reply(payload)):
        assert isinstance(frame, ErrorFrame) and frame.code == "unknown_model", frame
        assert UNSERVED in frame.message


@pytest.mark.parametrize(
    "other, flag",
    [
        ({"layers": "0:10"}, "--layers"),
        ({"follow": True}, "--follow"),
        ({"serve": "auto", "auto_models": ["x"]}, "--serve auto"),
        ({"no_model": True}, "--no-model"),
        ({"fake_engine": True}, "--fake-engine"),
    ],
)
def test_what_serves_one_model_only_is_refused_with_also_serve(tmp_path, other, flag):
    with pytest.raises(ValidationError) as refused:
        NodeSettings(home=tmp_path, also_serve=["gemma3-270m"], **other)
    assert f"--also-serve loads more whole models beside --model: it takes no {flag}" in str(refused.value)


def din(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dinet", *args], capture_output=True, text=True, timeout=120)
