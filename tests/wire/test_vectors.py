"""The published test vectors (docs/vectors/*.json, described in docs/protocol.md) against
the code: every signature is made again and compared byte for byte, every payload is
decoded (and encoded back), every sampler draw is reproduced. The files are what
another implementation tests itself with, so they must never drift from the code.

Independent checks ride along: signatures verify with the `cryptography` package over
the documented signed bytes, and peer ids are derived here from the raw public key.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import itertools
import json
import math
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from dinet.engine._text import CompletionText
from dinet.engine.sampler import Sampler, choose_token, uniform
from dinet.errors import (
    BadReceipt,
    FrameTooLarge,
    MalformedMessage,
    ManifestError,
    ModelCardError,
    ModelVersionsError,
)
from dinet.models.card import build_card, verify_model_card
from dinet.models.hashing import chunk_spans, hash_spans, merkle_root
from dinet.p2p._dht import dht_key, model_id_key
from dinet.p2p.identity import load_or_create_identity, peer_id_of
from dinet.wire.chunks import (
    ChunkHeader,
    ModelCard,
    SignedModelCard,
    decode_chunk_query,
    decode_chunk_reply,
)
from dinet.wire.framing import FrameReader, encode_frame
from dinet.wire.manifest import (
    Manifest,
    ManifestList,
    ManifestQuery,
    SignedManifest,
    sign_manifest,
    verify_manifest,
)
from dinet.wire.messages import (
    EndFrame,
    SignedReceipt,
    decode_countersigned,
    decode_reply,
    decode_request,
    encode,
    receipt_id,
)
from dinet.wire.receipt import (
    ReceiptBody,
    charge,
    check_delivery,
    countersign,
    output_hash,
    request_hash,
    sign_receipt,
    verify_countersigned,
)
from dinet.wire.shard import (
    NUMPY_DTYPES,
    ShardHidden,
    ShardStep,
    decode_shard_reply,
    decode_shard_request,
    decode_tensor,
    tensor_frames,
)
from dinet.wire.signing import sign_body, signed_by
from dinet.wire.verify import decode_verify_reply, decode_verify_request
from dinet.wire.versions import VERSIONS_DOMAIN, ModelVersions, decode_versions, newest_record, sign_versions

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "vectors"
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


@cache
def vectors(name: str) -> Any:
    return json.loads((VECTORS / f"{name}.json").read_text(encoding="utf-8"))


def key_of(name: str, home: Path) -> Any:
    """dinet's key pair for a published key, loaded the way a node loads its identity file."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "identity.key").write_bytes(bytes.fromhex(vectors("keys")["keys"][name]["seed"]))
    return load_or_create_identity(home)


def peer_of(name: str) -> str:
    return str(vectors("keys")["keys"][name]["peer_id"])


def base58(data: bytes) -> str:
    number, digits = int.from_bytes(data, "big"), ""
    while number:
        number, rest = divmod(number, 58)
        digits = B58[rest] + digits
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + digits


def check_signed(part: dict[str, Any]) -> None:
    """The signed bytes are domain || UTF-8(body); the signature is plain ed25519 over them."""
    data = part["domain"].encode() + part["body"].encode()
    assert data.hex() == part["signed_bytes_hex"]
    public = bytes.fromhex(vectors("keys")["keys"][part["signer"]]["public_key"])
    signature = base64.b64decode(part["signature"], validate=True)
    Ed25519PublicKey.from_public_bytes(public).verify(signature, data)  # raises if it does not
    assert signed_by(peer_of(part["signer"]), part["body"], part["signature"], part["domain"].encode())


# ---------------------------------------------------------------- keys


@pytest.mark.parametrize("name", ["node", "client"])
def test_a_peer_id_comes_from_the_seed_through_the_protobuf_key(name: str, tmp_path: Path) -> None:
    expected = vectors("keys")["keys"][name]
    public = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(expected["seed"])).public_key()
    raw = public.public_bytes_raw()
    assert raw.hex() == expected["public_key"]
    protobuf = bytes.fromhex("08011220") + raw
    assert protobuf.hex() == expected["public_key_protobuf"]
    multihash = bytes([0x00, len(protobuf)]) + protobuf
    assert multihash.hex() == expected["peer_id_multihash"]
    assert base58(multihash) == expected["peer_id"]
    assert peer_id_of(key_of(name, tmp_path)) == expected["peer_id"]


# ---------------------------------------------------------------- signed objects


def test_the_capability_manifest_vector(tmp_path: Path) -> None:
    v = vectors("manifest")
    check_signed(v)
    node = key_of(v["signer"], tmp_path)
    manifest = Manifest.model_validate_json(v["body"])
    again = sign_manifest(manifest, node)
    assert (again.body, again.signature) == (v["body"], v["signature"])
    message = SignedManifest.model_validate_json(v["payload"])
    assert message == again and encode(message) == v["payload"].encode()
    assert verify_manifest(message, now=v["now"]) == manifest
    listing = ManifestList.model_validate_json(encode(ManifestList(manifests=(message,))))
    assert listing.manifests == (message,)


@pytest.mark.parametrize("case", vectors("manifest")["refused"], ids=lambda c: c["why"])
def test_capability_manifests_the_vectors_refuse(case: dict[str, Any]) -> None:
    message = SignedManifest.model_validate_json(case["payload"])
    with pytest.raises(ManifestError):
        verify_manifest(message, now=case.get("now", vectors("manifest")["now"]))


def test_the_model_versions_vector(tmp_path: Path) -> None:
    v = vectors("model_versions")
    check_signed(v)
    assert v["domain"].encode() == VERSIONS_DOMAIN
    node = key_of(v["signer"], tmp_path)
    record = ModelVersions.model_validate_json(v["body"])
    again = sign_versions(record, node)
    assert (again.body, again.signature) == (v["body"], v["signature"])
    assert encode(again) == v["payload"].encode()
    assert "/dinet-versions/" + hashlib.sha256(v["key_preimage"].encode()).hexdigest() == v["key"]
    assert decode_versions(v["payload"].encode(), v["key"], now=v["now"]) == record
    older = decode_versions(v["older"].encode(), v["key"], now=v["now"])
    assert newest_record([older, record]) == 1 and newest_record([record, older]) == 0


@pytest.mark.parametrize("case", vectors("model_versions")["refused"], ids=lambda c: c["why"])
def test_model_versions_the_vectors_refuse(case: dict[str, Any]) -> None:
    v = vectors("model_versions")
    with pytest.raises(ModelVersionsError):
        decode_versions(case["payload"].encode(), v["key"], now=case.get("now", v["now"]))


def test_the_receipt_vector(tmp_path: Path) -> None:
    v = vectors("receipt")
    check_signed(v["node"])
    check_signed(v["client"])
    assert v["node"]["body"] == v["client"]["body"]
    node, client = key_of("node", tmp_path / "node"), key_of("client", tmp_path / "client")
    assert request_hash(v["request_payload"].encode()) == v["request_hash"]
    assert output_hash(v["token_ids"]) == v["output_hash"]
    body = ReceiptBody.model_validate_json(v["node"]["body"])
    assert (
        charge(body.prompt_tokens, body.completion_tokens, body.price_per_prompt_token, body.price_per_token)
        == body.amount
        == v["amount"]
    )
    by_node = sign_receipt(body, node)
    assert by_node == SignedReceipt(body=v["node"]["body"], node_signature=v["node"]["signature"])
    end = decode_reply(v["end_payload"].encode())
    assert isinstance(end, EndFrame) and end.receipt == by_node
    assert encode(end) == v["end_payload"].encode()
    both = countersign(by_node, client)
    assert both.client_signature == v["client"]["signature"]
    assert both == decode_countersigned(v["countersigned_payload"].encode())
    assert encode(both) == v["countersigned_payload"].encode()
    assert verify_countersigned(both) == body
    assert receipt_id(both.body) == v["receipt_id"]
    request = decode_request(v["request_payload"].encode())
    check_delivery(
        body,
        node=peer_of("node"),
        client=peer_of("client"),
        request_id=request.request_id,
        request_hash=v["request_hash"],
        model_hash=end.model_hash,
        first_index=len(request.params.prefix_tokens),
        token_ids=v["token_ids"],
        prompt_tokens=end.usage.prompt_tokens,
        max_price_prompt=body.price_per_prompt_token,
        max_price=body.price_per_token,
        now=v["now"],
    )


@pytest.mark.parametrize("case", vectors("receipt")["refused"], ids=lambda c: c["why"])
def test_receipts_the_vectors_refuse(case: dict[str, Any]) -> None:
    with pytest.raises(BadReceipt):
        verify_countersigned(decode_countersigned(case["payload"].encode()))


def test_the_model_card_vector(tmp_path: Path) -> None:
    v = vectors("model_card")
    check_signed(v)
    path = tmp_path / "tiny.gguf"
    path.write_bytes(bytes.fromhex(v["file_hex"]))
    spans = chunk_spans(path)
    assert [list(s) for s in spans] == v["chunk_spans"]
    small = chunk_spans(path, 64)
    assert [list(s) for s in small] == v["chunks_at_64"]["spans"]
    assert [h.hex() for h in hash_spans(path, small)] == v["chunks_at_64"]["hashes"]
    assert merkle_root(hash_spans(path, small)).hex() == v["chunks_at_64"]["model_hash"]
    assert merkle_root(hash_spans(path, spans)).hex() == v["model_hash"]
    card = ModelCard.model_validate_json(v["body"])
    with mock.patch("dinet.models.card.time.time", return_value=card.created_at):
        built = build_card(path, card.model_id, card.version, key_of(v["signer"], tmp_path))
    assert (built.body, built.signature) == (v["body"], v["signature"])
    message = SignedModelCard.model_validate_json(v["payload"])
    assert message == built and encode(message) == v["payload"].encode()
    assert verify_model_card(message, v["model_hash"]) == card


async def test_the_chunk_reply_vector() -> None:
    v = vectors("model_card")
    data = bytes.fromhex(v["file_hex"])
    offset, size = v["chunk_spans"][1]
    reply = bytes.fromhex(v["chunk_1_reply_hex"])
    chunk = data[offset : offset + size]
    assert reply == encode_frame(encode(ChunkHeader(index=1, size=size))) + encode_frame(chunk)
    (header, raw), then = await read_stream(reply, step=7)
    assert decode_chunk_reply(header) == ChunkHeader(index=1, size=size)
    assert raw == chunk and then == "end"


@pytest.mark.parametrize("case", vectors("model_card")["refused"], ids=lambda c: c["why"])
def test_model_cards_the_vectors_refuse(case: dict[str, Any]) -> None:
    with pytest.raises(ModelCardError):
        verify_model_card(SignedModelCard.model_validate_json(case["payload"]))


# ---------------------------------------------------------------- sampler and text


@pytest.mark.parametrize("draw", vectors("sampler")["uniform"], ids=lambda d: f"{d['seed']}-{d['index']}")
def test_uniform_draws(draw: dict[str, Any]) -> None:
    data = draw["seed"].to_bytes(8, "big") + draw["index"].to_bytes(8, "big")
    assert data.hex() == draw["input_hex"]
    person = bytes.fromhex(vectors("sampler")["personal_hex"])  # all 16 bytes, zero-padded
    digest = hashlib.blake2b(data, digest_size=8, person=person).digest()
    assert digest.hex() == draw["digest_hex"]
    u = uniform(draw["seed"], draw["index"])
    assert u == draw["u"] == float.fromhex(draw["u_hex"]) == float(int.from_bytes(digest, "big")) / 2.0**64


@pytest.mark.parametrize("case", vectors("sampler")["choose"], ids=lambda c: c["why"])
def test_sampler_choices(case: dict[str, Any]) -> None:
    logits = np.array(case["logits"], dtype=np.float32)
    assert [float(x) for x in logits] == case["logits"]  # the numbers are float32 values exactly
    token = choose_token(
        logits, case["index"], temperature=case["temperature"], top_p=case["top_p"], seed=case["seed"]
    )
    assert token == case["token"]
    if case["temperature"] > 0:
        assert case["lo"] <= uniform(case["seed"], case["index"]) == case["u"] < case["hi"]


def test_sampler_choices_over_a_large_vocabulary() -> None:
    case = vectors("sampler")["choose_many"]
    logits = np.frombuffer(base64.b64decode(case["logits_f32le_b64"]), dtype="<f4")
    sampler = Sampler(logits.shape[0])  # one sampler for every draw, as an engine keeps it
    got = [
        sampler.choose(
            logits, d["index"], temperature=case["temperature"], top_p=case["top_p"], seed=case["seed"]
        )
        for d in case["draws"]
    ]
    assert got == [d["token"] for d in case["draws"]]


def spec_choose(logits: list[float], i: int, temperature: float, top_p: float, seed: int) -> int:
    """The sampler as docs/protocol.md writes it, line by line, in plain Python floats (its
    exp is libm's and its sum runs left to right: neither is NumPy's)."""
    if temperature == 0:
        return logits.index(max(logits))
    s = [x / temperature for x in logits]
    m = max(s)
    w = [math.exp(x - m) for x in s]
    total = sum(w)
    order = sorted(range(len(s)), key=lambda t: (-s[t], t))
    c = list(itertools.accumulate(w[t] for t in order))
    u = (
        float(
            int.from_bytes(
                hashlib.blake2b(
                    seed.to_bytes(8, "big") + i.to_bytes(8, "big"), digest_size=8, person=b"dinet-sampler"
                ).digest(),
                "big",
            )
        )
        / 2**64
    )
    if top_p < 1:
        n = next((k + 1 for k in range(len(c)) if c[k] >= top_p * total), len(c))
        target = u * c[n - 1]
    else:
        n, target = len(c), u * total
    k = next((k for k in range(n) if c[k] > target), n - 1)
    return order[k]


def test_the_written_algorithm_reproduces_every_sampler_vector() -> None:
    v = vectors("sampler")
    for case in v["choose"]:
        args = (case["index"], case["temperature"], case["top_p"], case["seed"])
        assert spec_choose(case["logits"], *args) == case["token"], case["why"]
    many = v["choose_many"]
    logits = [float(x) for x in np.frombuffer(base64.b64decode(many["logits_f32le_b64"]), dtype="<f4")]
    for draw in many["draws"]:
        args = (draw["index"], many["temperature"], many["top_p"], many["seed"])
        assert spec_choose(logits, *args) == draw["token"]


@pytest.mark.parametrize("case", vectors("text")["cases"], ids=lambda c: c["why"])
def test_token_bytes_to_frames(case: dict[str, Any]) -> None:
    completion = CompletionText(tuple(case["stops"]))
    for piece in case["prefix_hex"]:
        completion.prime(bytes.fromhex(piece))
    answer, stopped = "", False
    for token in case["tokens"]:
        assert not stopped, "no token is pushed after a stop"
        piece = bytes.fromhex(token["bytes_hex"])
        released, stopped = completion.push(token["index"], token["token_id"], piece)
        assert [f.model_dump(exclude={"kind"}) for f in released] == token["releases"]
        answer += "".join(f.text for f in released)
    assert stopped == case["stopped"]
    if not stopped:
        at_end = completion.finish()
        assert [f.model_dump(exclude={"kind"}) for f in at_end] == case["finish_releases"]
        answer += "".join(f.text for f in at_end)
    assert answer == case["answer"]


# ---------------------------------------------------------------- frames, hashes, messages


async def read_stream(data: bytes, step: int = 1) -> tuple[list[bytes], str]:
    """The frames a reader takes from `data` fed `step` bytes at a time, and how the stream
    ended: "end" (cleanly, between frames), "truncated" or "too_large"."""
    position = 0

    async def read_some(n: int) -> bytes:
        nonlocal position
        chunk = data[position : position + min(n, step)]
        position += len(chunk)
        return chunk

    reader, frames = FrameReader(read_some), []
    try:
        while (frame := await reader.read_frame()) is not None:
            frames.append(frame)
    except FrameTooLarge:
        return frames, "too_large"
    except MalformedMessage:
        return frames, "truncated"
    return frames, "end"


@pytest.mark.parametrize("case", vectors("framing")["frames"], ids=lambda c: c["payload_hex"][:16] or "empty")
def test_frames_encode(case: dict[str, Any]) -> None:
    assert encode_frame(bytes.fromhex(case["payload_hex"])).hex() == case["frame_hex"]


@pytest.mark.parametrize("step", [1, 3, 1 << 20])
@pytest.mark.parametrize("case", vectors("framing")["streams"], ids=lambda c: c["bytes_hex"][:16] or "empty")
async def test_streams_decode(case: dict[str, Any], step: int) -> None:
    assert vectors("framing")["max_frame"] == 1 << 20
    frames, then = await read_stream(bytes.fromhex(case["bytes_hex"]), step)
    assert (frames, then) == ([bytes.fromhex(f) for f in case["frames_hex"]], case["then"])


@pytest.mark.parametrize("case", vectors("framing")["tensors"], ids=lambda c: c["header"]["dtype"])
async def test_tensor_frames(case: dict[str, Any]) -> None:
    header = case["header"]
    message: ShardStep | ShardHidden
    if header["kind"] == "shard_step":
        message = decode_shard_request(json.dumps(header).encode())  # type: ignore[assignment]
    else:
        message = decode_shard_reply(json.dumps(header).encode())  # type: ignore[assignment]
    array = np.array(case["array"], dtype=NUMPY_DTYPES[header["dtype"]])
    assert tensor_frames(message, array).hex() == case["bytes_hex"]
    (first, raw), then = await read_stream(bytes.fromhex(case["bytes_hex"]))
    assert first == encode(message) and then == "end"
    width = array.shape[1]
    np.testing.assert_array_equal(decode_tensor(raw, header["rows"], width, header["dtype"]), array)


def test_hash_vectors() -> None:
    v = vectors("hashes")
    for case in v["merkle"]:
        assert merkle_root([bytes.fromhex(h) for h in case["leaves"]]).hex() == case["root"]
    assert dht_key(v["dht_key"]["model_hash"]) == v["dht_key"]["key_hex"]
    assert model_id_key(v["model_id_key"]["model_id"]) == v["model_id_key"]["key_hex"]
    for case in v["output_hash"]:
        assert output_hash(case["token_ids"]) == case["hash"]


DECODERS: dict[str, Callable[[bytes], Any]] = {
    "infer_request": decode_request,
    "infer_reply": decode_reply,
    "countersigned_receipt": decode_countersigned,
    "verify_request": decode_verify_request,
    "verify_reply": decode_verify_reply,
    "manifest_query": ManifestQuery.model_validate_json,
    "manifest_reply": ManifestList.model_validate_json,
    "shard_request": decode_shard_request,
    "shard_reply": decode_shard_reply,
    "chunk_query": decode_chunk_query,
    "chunk_reply": decode_chunk_reply,
}


@pytest.mark.parametrize("case", vectors("messages")["cases"], ids=lambda c: f"{c['decoder']}: {c['why']}")
def test_message_vectors(case: dict[str, Any]) -> None:
    decode = DECODERS[case["decoder"]]
    if case["valid"]:
        assert json.loads(encode(decode(case["payload"].encode()))) == case["decoded"]
    else:
        with pytest.raises((MalformedMessage, ValidationError)):
            decode(case["payload"].encode())


# Every file in docs/vectors/, each written by the generator function of the same name.
VECTOR_FILES = (
    "keys",
    "manifest",
    "receipt",
    "model_card",
    "model_versions",
    "sampler",
    "text",
    "framing",
    "hashes",
    "messages",
)


def test_the_generator_writes_exactly_the_committed_files() -> None:
    spec = importlib.util.spec_from_file_location("vectors_make", VECTORS / "make.py")
    assert spec is not None and spec.loader is not None
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    for name in VECTOR_FILES:
        assert getattr(make, name)() == vectors(name), name


def test_every_signature_in_the_vectors_is_checked_above() -> None:
    # A new signed object added to the files must get its own checks here.
    signed = {p.stem for p in VECTORS.glob("*.json") if '"signed_bytes_hex"' in p.read_text(encoding="utf-8")}
    assert signed == {"manifest", "receipt", "model_card", "model_versions"}
    assert {p.stem for p in VECTORS.glob("*.json")} == set(VECTOR_FILES)


def test_sign_body_is_plain_ed25519_over_domain_and_utf8(tmp_path: Path) -> None:
    body = '{"region":"São Paulo"}'
    node = key_of("node", tmp_path)
    seed = bytes.fromhex(vectors("keys")["keys"]["node"]["seed"])
    expected = Ed25519PrivateKey.from_private_bytes(seed).sign(b"dom\n" + body.encode("utf-8"))
    assert sign_body(body, node, b"dom\n") == base64.b64encode(expected).decode()
