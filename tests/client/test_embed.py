"""Embeddings through the library against the shared mesh (two of its nodes embed), and a
lying embedding node of its own: verification, and typed errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dinet
from dinet.client.embed import MIN_COSINE, embed, request_embeddings
from dinet.client.network import open_network
from dinet.client.options import AskOptions
from dinet.config import ClientSettings
from dinet.engine import embedding_model_path
from dinet.errors import RemoteError, RequestError
from dinet.ledger import Ledger
from dinet.node.local_mesh import start_node
from dinet.p2p.streams import FramedStream
from dinet.wire.embed import MAX_EMBED_CHARS, MAX_EMBED_INPUTS, EmbedRequest, decode_embed_reply
from dinet.wire.ids import EMBED_PROTOCOL
from dinet.wire.messages import ErrorFrame

TEXTS = ["A cat sleeps on the sofa.", "A kitten naps on the couch.", "Interest rates rose in March."]


def embedding_peers(network) -> list[str]:
    return [p.peer_id for p in network.candidates(None, None, "embed")]


def test_client_embed_is_verified_by_another_peer(tmp_path, mesh) -> None:
    with dinet.Client(mesh.bootstrap[:1], home=tmp_path, mdns=False) as client:
        result = client.embed(TEXTS, verify_rate=1.0)
        single = client.embed("A cat sleeps on the sofa.")
    assert result.model_id == "all-minilm-l6-v2" and result.vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    similar, unrelated = result.vectors[0] @ result.vectors[1], result.vectors[0] @ result.vectors[2]
    assert similar > 0.5 > unrelated  # paraphrases near, an unrelated text far
    check = result.verification
    assert check is not None and check.verified is True, check
    assert check.verifier not in (None, result.peer_id) and check.worst_cosine >= MIN_COSINE
    assert np.allclose(single.vectors[0], result.vectors[0], atol=1e-5) and single.verification is None
    assert result.prompt_tokens == sum(result.tokens) and all(n > 2 for n in result.tokens)
    # Receipts, countersigned and kept: for the prompt tokens, from the answering peer and the verifier.
    with Ledger.in_home(tmp_path) as ledger:
        bodies = [r.body for r in ledger.receipts()]
    assert {(b.node, b.prompt_tokens, b.completion_tokens, b.model_hash) for b in bodies} == {
        (result.peer_id, result.prompt_tokens, 0, result.model_hash),
        (check.verifier, result.prompt_tokens, 0, result.model_hash),
        (single.peer_id, single.prompt_tokens, 0, result.model_hash),
    }


async def test_a_lying_embedding_node_is_caught(tmp_path, mesh) -> None:
    # Its own node, known to the mesh through nobody: the client alone joins through it.
    liar = start_node(
        tmp_path / "liar",
        no_model=True,
        extra_args=["--embedding-model", str(embedding_model_path()), "--embedding-liar", "random"],
        env={"DINET_ALLOW_LIARS": "1"},
    )
    try:
        settings = ClientSettings(
            home=tmp_path / "client", bootstrap=[mesh.bootstrap[0], liar.addr], mdns=False
        )
        async with open_network(settings) as network:
            await network.discover(None, None, timeout=20, want=3, task="embed")
            honest = set(embedding_peers(network)) - {liar.peer_id}
            assert liar.peer_id in embedding_peers(network) and honest
            options = AskOptions(only_peers={liar.peer_id}, verify_rate=1.0, verifiers=honest)
            lied = await embed(network, TEXTS, options)
            assert lied.peer_id == liar.peer_id
            check = lied.verification
            assert check is not None and check.verified is False and check.bad_inputs == (0, 1, 2), check
            assert check.worst_cosine is not None and check.worst_cosine < 0.5
            standing = network.reputation.standing(liar.peer_id) if network.reputation else None
            assert standing is not None and standing.score < 0.5
            # The same texts from an honest peer pass.
            fair = await embed(network, TEXTS, options.with_(only_peers=honest, verifiers=honest))
            assert fair.verification is not None and fair.verification.verified is True
    finally:
        liar.stop()


async def test_bad_embed_requests_get_typed_errors(client_settings, mesh) -> None:
    async with open_network(client_settings) as network:
        await network.discover(None, None, timeout=20, want=2, task="embed")
        peer = embedding_peers(network)[0]
        # Refused before anything is sent: too many texts, a text too long.
        for texts in (["x"] * (MAX_EMBED_INPUTS + 1), ["x" * (MAX_EMBED_CHARS + 1)], []):
            with pytest.raises(RequestError) as refused:
                await embed(network, texts, AskOptions())
            assert refused.value.param == "input"
        # On the wire, from the node: a malformed request, and a model it does not serve.
        stream = await network.host.open_stream(peer, EMBED_PROTOCOL, 60)
        framed = FramedStream(stream)
        long = "x" * (MAX_EMBED_CHARS + 1)
        await framed.send_payload(
            json.dumps({"kind": "embed", "request_id": "r", "model_hash": "ab", "inputs": [long]}).encode()
        )
        reply = decode_embed_reply(await framed.receive() or b"")
        assert isinstance(reply, ErrorFrame) and reply.code == "bad_request" and "inputs.0" in reply.message
        await framed.close()
        with pytest.raises(RemoteError) as unknown:
            await request_embeddings(
                network, peer, EmbedRequest(request_id="r", model_hash="ab" * 32, inputs=("x",))
            )
        assert unknown.value.code == "unknown_model"
        # And the node still embeds.
        assert (await embed(network, ["still here"], AskOptions(only_peers={peer}))).vectors.shape == (1, 384)
