"""Embeddings from the network (`/dinet/embed/1`), checked by another peer when asked.

    result = await embed(network, ["a text", "another"], AskOptions(verify_rate=1.0))
    result.vectors  # (n, dimensions) float32, each of length 1

The peer is chosen by routing among those that advertise an embedding model (a manifest
offer with task "embed"), the named one if `model_id` / `model_hash` say which; a peer
that fails or refuses is replaced by the next. With `verify_rate`, the same texts are
embedded again by another peer serving the same model hash, and every vector must point
the same way as its re-embedding: cosine similarity at least MIN_COSINE. Honest peers
running llama.cpp agree far closer than that (see docs/protocol.md); a vector of another
model, or made up, is nowhere near it.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import trio

from dinet.client.network import Network
from dinet.client.options import AskOptions
from dinet.errors import (
    BadReceipt,
    LedgerError,
    MalformedMessage,
    NoCapablePeer,
    PeerError,
    PeerStalled,
    RemoteError,
    RequestError,
)
from dinet.p2p.streams import FramedStream, open_framed
from dinet.routing.select import rank_peers
from dinet.trust.reputation import Event
from dinet.wire.embed import (
    MAX_EMBED_CHARS,
    MAX_EMBED_INPUTS,
    EmbeddingsFrame,
    EmbedRequest,
    decode_embed_reply,
)
from dinet.wire.ids import EMBED_PROTOCOL, ModelHash, PeerId, RequestId
from dinet.wire.messages import ErrorFrame, encode
from dinet.wire.receipt import check_delivery, countersign, request_hash, verify_node_signature

logger = logging.getLogger(__name__)

MIN_COSINE = 0.999  # a vector and its re-embedding by another honest peer agree at least this much
EMBED_SILENCE_S = 30.0  # a peer silent this long (no vectors, no queued frame) is given up
MAX_PEERS_TRIED = 3


@dataclass(frozen=True)
class EmbeddingCheck:
    """The outcome of re-embedding on another peer. `verified` is None when nobody could."""

    verified: bool | None
    verifier: PeerId | None
    worst_cosine: float | None = None
    bad_inputs: tuple[int, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # (n, dimensions) float32, unit length
    tokens: tuple[int, ...]  # per input, as the model read it (cut to its window)
    model_id: str
    model_hash: ModelHash
    peer_id: PeerId
    verification: EmbeddingCheck | None = None  # None: not checked (verify_rate)

    @property
    def dimensions(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def prompt_tokens(self) -> int:
        return sum(self.tokens)


def check_inputs(texts: Sequence[str]) -> tuple[str, ...]:
    """The texts as a tuple, or RequestError naming what is wrong with them."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise RequestError("input must be a list of strings", "input")
    if not 1 <= len(texts) <= MAX_EMBED_INPUTS:
        raise RequestError(f"input must hold 1 to {MAX_EMBED_INPUTS} texts, not {len(texts)}", "input")
    for i, text in enumerate(texts):
        if len(text) > MAX_EMBED_CHARS:
            raise RequestError(f"input[{i}] has {len(text)} characters, above {MAX_EMBED_CHARS}", "input")
    return tuple(texts)


async def embed(network: Network, texts: Sequence[str], options: AskOptions) -> Embeddings:
    """Vectors for `texts` from a peer serving an embedding model (see the module's doc).

    RequestError for bad input; NoCapablePeer when no peer serves one; the last peer's
    error when every peer tried failed.
    """
    inputs = check_inputs(texts)
    with trio.fail_after(options.request_timeout_s):
        peers = await network.discover(
            options.model_id, options.model_hash, timeout=options.discover_timeout_s, task="embed"
        )
        allowed = options.only_peers
        peers = [p for p in network.trusted(peers) if allowed is None or p.peer_id in allowed]
        if not peers:
            raise NoCapablePeer("no trusted peer that serves an embedding model may be asked")
        last: Exception | None = None
        for peer in rank_peers(peers, 1, options.policy, limit=MAX_PEERS_TRIED):
            offer = _offer(network, peer.peer_id, options.model_id, options.model_hash)
            if offer is None:
                continue
            request = EmbedRequest(request_id=RequestId(uuid.uuid4().hex), model_hash=offer[1], inputs=inputs)
            try:
                frame = await request_embeddings(network, peer.peer_id, request)
            except RemoteError as exc:
                if exc.code == "bad_request":
                    raise RequestError(f"the peer refused the input: {exc}", "input") from None
                last = exc
            except (PeerError, MalformedMessage) as exc:
                last = exc
            else:
                await network.note(peer.peer_id, Event.SUCCESS)
                result = Embeddings(frame.array(), frame.tokens, offer[0], offer[1], peer.peer_id)
                if options.verify_rate > 0 and random.random() < options.verify_rate:
                    check = await verify_embeddings(
                        network, inputs, result.vectors, offer[1],
                        exclude={peer.peer_id}, verifiers=options.verifiers,
                    )  # fmt: skip
                    if check.verified is not None:
                        verdict = Event.VERIFY_PASS if check.verified else Event.VERIFY_FAIL
                        await network.note(peer.peer_id, verdict)
                    result = Embeddings(*_fields(result), verification=check)
                return result
            logger.info("embedding peer %s failed: %s", peer.peer_id, last)
            await network.note(peer.peer_id, Event.FAILURE)
    assert last is not None
    raise last


def _fields(result: Embeddings) -> tuple[np.ndarray, tuple[int, ...], str, ModelHash, PeerId]:
    return result.vectors, result.tokens, result.model_id, result.model_hash, result.peer_id


def _offer(
    network: Network, peer_id: PeerId, model_id: str | None, model_hash: ModelHash | None
) -> tuple[str, ModelHash] | None:
    manifest = network.directory.get(peer_id)
    for o in manifest.models if manifest is not None else ():
        if o.task == "embed" and model_id in (None, o.model_id) and model_hash in (None, o.model_hash):
            return o.model_id, o.model_hash
    return None


async def verify_embeddings(
    network: Network,
    texts: tuple[str, ...],
    vectors: np.ndarray,
    model_hash: ModelHash,
    *,
    exclude: Collection[PeerId] = (),
    verifiers: Collection[PeerId] | None = None,
    min_cosine: float = MIN_COSINE,
) -> EmbeddingCheck:
    """Have `texts` embedded again by a peer not in `exclude` and compare with `vectors`."""
    candidates = [
        p for p in network.trusted(network.candidates(None, model_hash, "embed"))
        if p.peer_id not in exclude and (verifiers is None or p.peer_id in verifiers)
    ]  # fmt: skip
    request = EmbedRequest(request_id=RequestId(uuid.uuid4().hex), model_hash=model_hash, inputs=texts)
    last_error = f"no other peer embeds with {model_hash[:16]}"
    for peer in rank_peers(candidates, 1, "latency", limit=MAX_PEERS_TRIED):
        try:
            frame = await request_embeddings(network, peer.peer_id, request)
        except (PeerError, MalformedMessage) as exc:
            logger.info("embedding verifier %s failed: %s", peer.peer_id, exc)
            last_error = f"{peer.peer_id}: {exc}"
            continue
        again = frame.array()
        if again.shape != vectors.shape:
            return EmbeddingCheck(False, peer.peer_id, None, tuple(range(len(texts))))
        cosines = cosine_rows(vectors, again)
        bad = tuple(int(i) for i in np.flatnonzero(~(cosines >= min_cosine)))
        return EmbeddingCheck(not bad, peer.peer_id, float(cosines.min()), bad)
    return EmbeddingCheck(None, None, error=last_error)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b`: shape (n,)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray((a64 * b64).sum(axis=1) / norms)


async def request_embeddings(network: Network, peer_id: PeerId, request: EmbedRequest) -> EmbeddingsFrame:
    """`peer_id`'s vectors for `request`. RemoteError if it refuses, MalformedMessage if its
    reply does not fit the request, another PeerError if it cannot be reached or goes silent."""
    framed = await open_framed(network.host, peer_id, EMBED_PROTOCOL, network.dial_timeout_s)
    sent = encode(request)
    try:
        await framed.send_payload(sent)
        while True:
            with trio.move_on_after(EMBED_SILENCE_S):
                payload = await framed.receive()
                if payload is None:
                    raise PeerError(f"{peer_id} closed the stream without embeddings")
                frame = decode_embed_reply(payload)
                if isinstance(frame, ErrorFrame):
                    raise RemoteError(frame.code, frame.message)
                if isinstance(frame, EmbeddingsFrame):
                    if frame.model_hash != request.model_hash:
                        raise MalformedMessage(
                            f"vectors of model {frame.model_hash[:16]}, asked {request.model_hash[:16]}"
                        )
                    if len(frame.vectors) != len(request.inputs):
                        raise MalformedMessage(
                            f"{len(frame.vectors)} vectors for {len(request.inputs)} inputs"
                        )
                    await _settle(network, framed, peer_id, request, request_hash(sent), frame)
                    return frame
                continue  # queued
            raise PeerStalled(f"{peer_id} sent nothing for {EMBED_SILENCE_S:g} s")
    finally:
        with trio.CancelScope(shield=True):
            await framed.close()


async def _settle(
    network: Network,
    framed: FramedStream,
    peer_id: PeerId,
    request: EmbedRequest,
    digest: str,
    frame: EmbeddingsFrame,
) -> None:
    """Check the node's receipt against what it delivered (the prompt tokens it counted,
    no completion tokens, its advertised prompt price); countersign, send back and keep
    it. A receipt that does not match is refused (never countersigned): MalformedMessage."""
    if frame.receipt is None:
        return
    manifest = network.directory.get(peer_id)
    advertised = (
        (manifest.price_per_prompt_token, manifest.price_per_token) if manifest is not None else (0.0, 0.0)
    )
    cap = network.max_price
    try:
        body = verify_node_signature(frame.receipt)
        check_delivery(
            body,
            node=peer_id,
            client=network.peer_id,
            request_id=request.request_id,
            request_hash=digest,
            model_hash=frame.model_hash,
            first_index=0,
            token_ids=(),
            prompt_tokens=sum(frame.tokens),
            max_price_prompt=advertised[0] if cap is None else min(advertised[0], cap),
            max_price=advertised[1] if cap is None else min(advertised[1], cap),
        )
    except BadReceipt as exc:
        raise MalformedMessage(f"refused the receipt of {peer_id}: {exc}") from None
    receipt = countersign(frame.receipt, network.key)
    await framed.send(receipt)
    if network.ledger is not None:
        try:
            await trio.to_thread.run_sync(network.ledger.record, receipt)
        except LedgerError as exc:
            logger.warning("receipt of %s not kept: %s", peer_id, exc)
