"""Embeddings through a real `din gateway` in front of the mesh (two of its nodes serve
all-MiniLM-L6-v2): the official `openai` and `ollama` clients, compared with the vectors
llama.cpp makes in this process from the same GGUF."""

from __future__ import annotations

import base64

import llama_cpp
import numpy as np
import ollama
import openai
import pytest
from _gateway_helpers import API_KEY

from dinet.engine import embedding_model_path
from dinet.engine.llama._llama_cpp import load_llama
from dinet.engine.llama.embed_process import WINDOW, embed

EMBED_MODEL = "all-minilm-l6-v2"
TEXTS = ["The weather is lovely today.", "It is sunny and warm outside.", "He drove the truck to the depot."]


@pytest.fixture(scope="module")
def local_vectors() -> np.ndarray:
    """TEXTS embedded here, by llama.cpp in this process."""
    llm = load_llama(
        embedding_model_path(), threads=1, n_ctx=WINDOW, embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN, n_batch=WINDOW, n_ubatch=WINDOW,
    )  # fmt: skip
    return embed(llm, tuple(TEXTS))[0]


def test_openai_embeddings_one_and_several_inputs_floats_and_base64(client, local_vectors, mesh):
    several = client.embeddings.create(model=EMBED_MODEL, input=TEXTS)
    assert [d.index for d in several.data] == [0, 1, 2] and several.model == EMBED_MODEL
    got = np.array([d.embedding for d in several.data], dtype=np.float32)
    assert got.shape == (3, 384) and np.allclose(got, local_vectors, atol=1e-4)
    assert several.usage.prompt_tokens == several.usage.total_tokens > 3 * 2
    extra = several.model_extra or {}
    assert (
        extra["dinet"]["peer_id"] in {n.peer_id for n in mesh.nodes} and extra["dinet"]["dimensions"] == 384
    )
    one = client.embeddings.create(model=EMBED_MODEL, input=TEXTS[1], dimensions=384)
    assert len(one.data) == 1 and np.allclose(one.data[0].embedding, local_vectors[1], atol=1e-4)
    # base64 on the wire, as OpenAI's own: little-endian float32 (the SDK asks for it and decodes).
    raw = client.embeddings.with_raw_response.create(
        model=EMBED_MODEL, input=TEXTS[:2], encoding_format="base64"
    )
    encoded = raw.http_response.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    assert np.allclose(np.frombuffer(base64.b64decode(encoded), dtype="<f4"), local_vectors[0], atol=1e-4)


def test_openai_embeddings_refuse_what_they_cannot_honour(client):
    cases = {
        "dimensions": dict(model=EMBED_MODEL, input="x", dimensions=128),
        "input": dict(model=EMBED_MODEL, input=[[1, 2, 3]]),
        "colour": dict(model=EMBED_MODEL, input="x", extra_body={"colour": "red"}),
        "model": dict(model="smollm2-135m-instruct", input="x"),  # generates text, embeds nothing
    }
    for field, kwargs in cases.items():
        with pytest.raises(openai.BadRequestError) as refused:
            client.embeddings.create(**kwargs)
        assert field in refused.value.message, (field, refused.value.message)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="x")
    with pytest.raises(openai.BadRequestError) as too_long:
        client.embeddings.create(model=EMBED_MODEL, input="x" * 10_000)
    assert "input" in too_long.value.message


def test_ollama_embed_and_embeddings(gateway, local_vectors):
    client = ollama.Client(host=gateway.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)
    several = client.embed(model=EMBED_MODEL, input=TEXTS)
    assert np.allclose(np.array(several.embeddings), local_vectors, atol=1e-4)
    assert several.prompt_eval_count and several.prompt_eval_count > 6
    one = client.embed(model=f"{EMBED_MODEL}:latest", input=TEXTS[2])
    assert len(one.embeddings) == 1 and np.allclose(one.embeddings[0], local_vectors[2], atol=1e-4)
    legacy = client.embeddings(model=EMBED_MODEL, prompt=TEXTS[0])
    assert np.allclose(legacy.embedding, local_vectors[0], atol=1e-4)
    shown = client.show(EMBED_MODEL)
    assert shown.capabilities == ["embedding"]
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model=EMBED_MODEL, input="fine", dimensions=100)
    assert refused.value.status_code == 400 and "dimensions" in refused.value.error
    with pytest.raises(ollama.ResponseError) as cut:  # a text longer than the window, not to be cut
        client.embed(model=EMBED_MODEL, input="word " * 300, truncate=False)
    assert cut.value.status_code == 400 and "truncate" in cut.value.error
