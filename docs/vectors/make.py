"""Writes the test vectors of docs/protocol.md (the JSON files beside this script).

    PYTHONPATH=src python docs/vectors/make.py

Every value comes from dinet's own code and is checked here against a second,
independent derivation (the `cryptography` package for ed25519, hashlib and struct
for hashes, a plain full-sort sampler) before it is written. tests/wire/test_vectors.py
checks the committed files against the code, so they cannot drift: run this script
only when the protocol changes on purpose, and say so in docs/protocol.md.

Nothing here is random: the keys are RFC 8032's first two test keys, ed25519
signatures are deterministic, every time is a fixed number, and the numpy generator
that makes the large sampler vector is seeded (its output is committed anyway).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import gguf
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dinet.engine._text import CompletionText
from dinet.engine.sampler import choose_token, uniform
from dinet.models.card import build_card
from dinet.models.hashing import CHUNK_SIZE, chunk_spans, file_sha256, hash_spans, merkle_root
from dinet.p2p._dht import dht_key, model_id_key
from dinet.p2p.identity import load_or_create_identity, peer_id_of
from dinet.wire.chunks import ChunkHeader, ModelCard, decode_chunk_query, decode_chunk_reply
from dinet.wire.framing import encode_frame
from dinet.wire.manifest import (
    Load,
    Manifest,
    ManifestList,
    ManifestQuery,
    ModelOffer,
    SignedManifest,
    sign_manifest,
)
from dinet.wire.messages import (
    CountersignedReceipt,
    EndFrame,
    InferRequest,
    Usage,
    decode_countersigned,
    decode_reply,
    decode_request,
    encode,
    receipt_id,
)
from dinet.wire.receipt import (
    CLIENT_DOMAIN,
    NODE_DOMAIN,
    ReceiptBody,
    charge,
    countersign,
    output_hash,
    request_hash,
    sign_receipt,
)
from dinet.wire.shard import ShardHidden, ShardStep, decode_shard_reply, decode_shard_request, tensor_frames
from dinet.wire.signing import sign_body
from dinet.wire.verify import decode_verify_reply, decode_verify_request
from dinet.wire.versions import VERSIONS_DOMAIN, ModelVersion, ModelVersions, sign_versions, versions_key

HERE = Path(__file__).resolve().parent
# RFC 8032 section 7.1, TEST 1 and TEST 2: published ed25519 keys, never to be used for real.
SEEDS = {
    "node": "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    "client": "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
}
RFC_PUBLIC = {
    "node": "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
    "client": "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
}
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
ISSUED_AT = 1795000000.0
MODEL_HASH = "3b7d2e0c4a1f5b6e8d9c0a1b2c3d4e5f60718293a4b5c6d7e8f9012345678abc"
MIN_MARGIN = 1e-9  # a draw this close to a token's edge could flip with another exp or sum


# ---------------------------------------------------------------- keys and signatures


def base58(data: bytes) -> str:
    """Bitcoin base58 (base58btc), written out so the vectors do not lean on libp2p's."""
    number = int.from_bytes(data, "big")
    digits = ""
    while number:
        number, rest = divmod(number, 58)
        digits = B58[rest] + digits
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + digits


def key(name: str) -> Any:
    """dinet's own key pair for a published seed: the seed is what an identity file holds."""
    with tempfile.TemporaryDirectory() as home:
        (Path(home) / "identity.key").write_bytes(bytes.fromhex(SEEDS[name]))
        return load_or_create_identity(Path(home))


def independent_signature(name: str, data: bytes) -> str:
    raw = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(SEEDS[name])).sign(data)
    return base64.b64encode(raw).decode()


def keys() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in SEEDS:
        private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(SEEDS[name]))
        public = private.public_key().public_bytes_raw()
        assert public.hex() == RFC_PUBLIC[name]
        protobuf = bytes([0x08, 0x01, 0x12, 0x20]) + public  # Type = Ed25519 (1), Data = 32 bytes
        multihash = bytes([0x00, len(protobuf)]) + protobuf  # identity multihash
        peer_id = base58(multihash)
        assert peer_id == peer_id_of(key(name)), name
        out[name] = {
            "seed": SEEDS[name],
            "public_key": public.hex(),
            "public_key_protobuf": protobuf.hex(),
            "peer_id_multihash": multihash.hex(),
            "peer_id": peer_id,
        }
    return {
        "about": "RFC 8032 TEST 1 (node) and TEST 2 (client) keys: seed -> ed25519 public key -> "
        "libp2p PublicKey protobuf -> identity multihash -> base58btc peer id. A dinet "
        "identity file (identity.key, client.key) holds the 32-byte seed, nothing else.",
        "keys": out,
    }


def signed(name: str, domain: bytes, body: str, signature: str) -> dict[str, Any]:
    """The fields every signed-object vector shares, checked against an independent signer."""
    data = domain + body.encode()
    assert signature == independent_signature(name, data), name
    return {
        "signer": name,
        "domain": domain.decode(),
        "body": body,
        "signed_bytes_hex": data.hex(),
        "signature": signature,
    }


def refusal(why: str, payload: str, now: float | None = None) -> dict[str, Any]:
    return {"why": why, "payload": payload} | ({} if now is None else {"now": now})


def replaced(text: str, old: str, new: str) -> str:
    assert old in text and old != new, old
    return text.replace(old, new)


def manifest() -> dict[str, Any]:
    node, client = key("node"), key("client")
    peer = peer_id_of(node)
    body = Manifest(
        peer_id=peer,
        version="dinet/0.1.0",
        region="São Paulo",
        addrs=(f"/ip4/192.0.2.7/tcp/4001/p2p/{peer}",),
        models=(
            ModelOffer(
                model_id="smollm2-135m-instruct",
                model_hash=MODEL_HASH,
                quantization="q4_1",
                context=2048,
                layers=(0, 30),
            ),
            ModelOffer(
                model_id="smollm2-135m-instruct",
                model_hash=MODEL_HASH,
                quantization="q4_1",
                context=2048,
                layers=(10, 20),
                stage=True,
                n_layers=30,
            ),
        ),
        max_concurrent=4,
        tokens_per_s=95.5,
        ttft_ms=40.5,
        price_per_token=2e-05,
        load=Load(active=1, queued=0),
        issued_at=ISSUED_AT,
        expires_at=ISSUED_AT + 30,
        price_per_prompt_token=1e-06,
        reach="public",
    )
    message = sign_manifest(body, node)
    payload = encode(message).decode()
    signature = message.signature
    assert "+" in signature or "/" in signature  # so the URL-safe variant differs
    long_life = replaced(message.body, f'"expires_at":{ISSUED_AT + 30}', f'"expires_at":{ISSUED_AT + 301}')
    return {
        "about": "A node's capability manifest (/dinet/manifest/1 and the gossip topic /dinet/manifests/1), "
        "signed with an empty domain. Valid at `now`; every `refused` payload must be refused "
        "(at its own `now` if it has one).",
        **signed("node", b"", message.body, signature),
        "payload": payload,
        "now": ISSUED_AT + 1,
        "refused": [
            refusal(
                "body changed after signing",
                replaced(payload, '\\"tokens_per_s\\":95.5', '\\"tokens_per_s\\":950.5'),
            ),
            refusal(
                "signed by another key", replaced(payload, signature, sign_manifest(body, client).signature)
            ),
            refusal(
                "signature in the URL-safe base64 alphabet",
                replaced(payload, signature, signature.replace("+", "-").replace("/", "_")),
            ),
            refusal("signature without its = padding", replaced(payload, signature, signature.rstrip("="))),
            refusal("expired: now is expires_at", payload, ISSUED_AT + 30),
            refusal("issued more than 60 s after now", payload, ISSUED_AT - 61),
            refusal(
                "a lifetime over 300 s, though signed by its peer",
                encode(SignedManifest(body=long_life, signature=sign_body(long_life, node))).decode(),
            ),
        ],
    }


def model_versions() -> dict[str, Any]:
    node, client = key("node"), key("client")
    publisher = peer_id_of(node)
    v1 = ModelVersion(model_hash=MODEL_HASH, version="1", published_at=ISSUED_AT - 86400)
    v2 = ModelVersion(model_hash="ab" * 32, version="2", published_at=ISSUED_AT)
    record = ModelVersions(
        publisher=publisher,
        model_id="smollm2-135m-instruct",
        sequence=1,
        versions=(v2, v1),
        issued_at=ISSUED_AT,
        expires_at=ISSUED_AT + 7 * 86400,
    )
    message = sign_versions(record, node)
    payload = encode(message).decode()
    digest = hashlib.sha256(f"{publisher}\n{record.model_id}".encode()).hexdigest()
    key_text = f"/dinet-versions/{digest}"
    assert key_text == versions_key(publisher, record.model_id)
    older = record.model_copy(update={"sequence": 0, "versions": (v1,)})
    out_of_order = record.model_copy(update={"versions": (v1, v2)})
    other_model = record.model_copy(update={"model_id": "another-model"})
    return {
        "about": "A publisher's model-version record (a DHT value under `key`), signed with the "
        "domain `dinet-versions/1` + LF. Valid at `now` under `key`; every `refused` payload "
        "must be refused under `key` (at its own `now` if it has one); `older` must lose to "
        "`payload` when a store or reader chooses between them.",
        **signed("node", VERSIONS_DOMAIN, message.body, message.signature),
        "payload": payload,
        "key": key_text,
        "key_preimage": f"{publisher}\n{record.model_id}",
        "now": ISSUED_AT + 1,
        "older": encode(sign_versions(older, node)).decode(),
        "refused": [
            refusal("body changed after signing", replaced(payload, '\\"sequence\\":1', '\\"sequence\\":9')),
            refusal(
                "signed by another key",
                replaced(payload, message.signature, sign_versions(record, client).signature),
            ),
            refusal(
                "signed with an empty domain",
                replaced(payload, message.signature, sign_body(message.body, node)),
            ),
            refusal("expired: now is expires_at", payload, ISSUED_AT + 7 * 86400),
            refusal("versions not newest first", encode(sign_versions(out_of_order, node)).decode()),
            refusal(
                "another model's record under this key", encode(sign_versions(other_model, node)).decode()
            ),
        ],
    }


def receipt() -> dict[str, Any]:
    node, client = key("node"), key("client")
    prefix = (504, 1423)
    request = InferRequest.model_validate(
        {
            "request_id": "9f1c6b0e8a2d4c3f9e7b5a1d2c3e4f50",
            "model_id": "smollm2-135m-instruct",
            "model_hash": MODEL_HASH,
            "params": {
                "prompt": "Name a river.",
                "max_tokens": 16,
                "temperature": 0.7,
                "top_p": 0.9,
                "seed": 42,
                "prefix_tokens": prefix,
            },
        },
        strict=False,
    )
    request_payload = encode(request)
    tokens = [30, 28, 4837, 2817, 30, 198, 2, 49151, 0, 1, 17, 8]
    prompt_tokens, price_prompt, price = 31, 1e-06, 2e-05
    body = ReceiptBody(
        request_id=request.request_id,
        request_hash=request_hash(request_payload),
        model_hash=MODEL_HASH,
        node=peer_id_of(node),
        client=peer_id_of(client),
        prompt_tokens=prompt_tokens,
        completion_tokens=len(tokens),
        first_index=len(prefix),
        price_per_prompt_token=price_prompt,
        price_per_token=price,
        amount=charge(prompt_tokens, len(tokens), price_prompt, price),
        output_hash=output_hash(tokens),
        issued_at=ISSUED_AT,
    )
    assert body.amount == 31 * 1e-06 + 12 * 2e-05 != 0.000271  # IEEE doubles, in that order
    assert body.request_hash == hashlib.sha256(request_payload).hexdigest()
    assert body.output_hash == hashlib.sha256(b"".join(struct.pack(">I", t) for t in tokens)).hexdigest()
    by_node = sign_receipt(body, node)
    end = EndFrame(
        finish_reason="length",
        usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=len(prefix) + len(tokens)),
        ttft_ms=41.5,
        tokens_per_s=88.25,
        model_id="smollm2-135m-instruct",
        model_hash=MODEL_HASH,
        receipt=by_node,
    )
    both = countersign(by_node, client)
    payload = encode(both).decode()
    wrong_amount = replaced(by_node.body, f'"amount":{body.amount}', '"amount":0.000271')
    return {
        "about": "A node's receipt (in its end frame) and the client's countersignature (sent back on the "
        "same stream). `request_payload` is the client's infer frame payload, `token_ids` the "
        "tokens the node sent. Valid at `now`; every `refused` payload must be refused.",
        "request_payload": request_payload.decode(),
        "request_hash": body.request_hash,
        "token_ids": tokens,
        "output_hash": body.output_hash,
        "amount": body.amount,
        "receipt_id": receipt_id(by_node.body),
        "now": ISSUED_AT + 1,
        "node": signed("node", NODE_DOMAIN, by_node.body, by_node.node_signature),
        "end_payload": encode(end).decode(),
        "client": signed("client", CLIENT_DOMAIN, both.body, both.client_signature),
        "countersigned_payload": payload,
        "refused": [
            refusal(
                "body changed after signing",
                replaced(payload, '\\"prompt_tokens\\":31', '\\"prompt_tokens\\":3'),
            ),
            refusal(
                "the node's signature made over the client's domain",
                replaced(payload, both.node_signature, sign_body(by_node.body, node, CLIENT_DOMAIN)),
            ),
            refusal(
                "the client's signature made over the node's domain",
                replaced(payload, both.client_signature, sign_body(by_node.body, client, NODE_DOMAIN)),
            ),
            refusal(
                "an amount its counts and prices do not give, though both signed it",
                encode(
                    CountersignedReceipt(
                        body=wrong_amount,
                        node_signature=sign_body(wrong_amount, node, NODE_DOMAIN),
                        client_signature=sign_body(wrong_amount, client, CLIENT_DOMAIN),
                    )
                ).decode(),
            ),
        ],
    }


def tiny_gguf(path: Path) -> bytes:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny vector – ü")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_file_type(0)
    writer.add_license("apache-2.0")
    for name, shape in {
        "token_embd.weight": (4, 8),
        "blk.0.attn_norm.weight": (8,),
        "output_norm.weight": (8,),
    }.items():
        writer.add_tensor(name, np.arange(math.prod(shape), dtype=np.float32).reshape(shape) / 8)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def model_card() -> dict[str, Any]:
    node = key("node")
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "tiny.gguf"
        data = tiny_gguf(path)
        spans = chunk_spans(path)
        small_spans = chunk_spans(path, 64)
        small_hashes = hash_spans(path, small_spans)
        with mock.patch("dinet.models.card.time.time", return_value=ISSUED_AT):
            message = build_card(path, "tiny-vector", "v1", node)
        assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    parsed = ModelCard.model_validate_json(message.body)
    hashes = [hashlib.sha256(data[o : o + n]).hexdigest() for o, n in spans]
    assert list(parsed.chunk_hashes) == hashes and parsed.chunk_size == CHUNK_SIZE
    assert parsed.model_hash == merkle_root([bytes.fromhex(h) for h in hashes]).hex()
    payload = encode(message).decode()
    header = ChunkHeader(index=1, size=spans[1][1])
    chunk = data[spans[1][0] : spans[1][0] + spans[1][1]]
    return {
        "about": "A model card (/dinet/chunks/1) for the tiny GGUF file in `file_hex`, signed by its "
        "publisher with an empty domain: its chunks start at byte 0 and at each tensor's first "
        "byte. `chunks_at_64` shows the same file cut with chunk size 64 instead of 1 MiB "
        "(the protocol's size), to show the cuts within a segment. `chunk_1_reply_hex` is "
        "what a node sends for chunk_request indices [1]: a chunk frame, then a raw frame.",
        "file_hex": data.hex(),
        "chunk_spans": [list(s) for s in spans],
        "chunks_at_64": {
            "spans": [list(s) for s in small_spans],
            "hashes": [h.hex() for h in small_hashes],
            "model_hash": merkle_root(small_hashes).hex(),
        },
        "model_hash": parsed.model_hash,
        **signed("node", b"", message.body, message.signature),
        "payload": payload,
        "chunk_1_reply_hex": (encode_frame(encode(header)) + encode_frame(chunk)).hex(),
        "refused": [
            refusal(
                "body changed after signing",
                replaced(payload, '\\"version\\":\\"v1\\"', '\\"version\\":\\"v2\\"'),
            ),
            refusal(
                "signed by another key",
                replaced(payload, message.signature, sign_body(message.body, key("client"))),
            ),
        ],
    }


# ---------------------------------------------------------------- sampler and text


def reference_choice(
    logits: list[float], index: int, temperature: float, top_p: float, seed: int
) -> tuple[int, float | None, float | None]:
    """The sampler's definition the slow, obvious way: (token, lo, hi) with lo <= u < hi."""
    if temperature <= 0:
        return logits.index(max(logits)), None, None
    scaled = [x / temperature for x in logits]
    top = max(scaled)
    weights = [math.exp(s - top) for s in scaled]
    total = math.fsum(weights)
    order = sorted(range(len(logits)), key=lambda i: (-scaled[i], i))
    cumulative = list(itertools.accumulate(weights[i] for i in order))
    end = len(order)
    if top_p < 1.0:
        end = next((k + 1 for k, c in enumerate(cumulative) if c >= top_p * total), len(order))
    mass = cumulative[end - 1] if top_p < 1.0 else total
    target = uniform(seed, index) * mass
    k = next((k for k in range(end) if cumulative[k] > target), end - 1)
    return order[k], (cumulative[k - 1] if k else 0.0) / mass, cumulative[k] / mass


def as_f32(values: Any) -> list[float]:
    return [float(x) for x in np.asarray(values, dtype=np.float32)]


def sampler() -> dict[str, Any]:
    draws = []
    for seed, index in [(0, 0), (0, 1), (42, 0), (42, 7), (1, 1000), (2**63 - 1, 2**32), (123456789, 4095)]:
        data = seed.to_bytes(8, "big") + index.to_bytes(8, "big")
        digest = hashlib.blake2b(data, digest_size=8, person=b"dinet-sampler").digest()
        u = uniform(seed, index)
        assert u == float(int.from_bytes(digest, "big")) / 2.0**64
        draws.append(
            {
                "seed": seed,
                "index": index,
                "input_hex": data.hex(),
                "digest_hex": digest.hex(),
                "u": u,
                "u_hex": u.hex(),
            }
        )
    rng = np.random.default_rng(2024)
    cases: list[dict[str, Any]] = [
        {
            "why": "greedy: the first of the tied best logits",
            "logits": as_f32([1.5, 3.25, -2.0, 3.25]),
            "temperature": 0.0,
            "top_p": 1.0,
            "seed": 9,
            "index": 0,
        },
        {
            "why": "plain sampling",
            "logits": as_f32(rng.standard_normal(8) * 2),
            "temperature": 0.7,
            "top_p": 1.0,
            "seed": 42,
            "index": 3,
        },
        {
            "why": "nucleus, with ties at the top (broken by the lower id)",
            "logits": as_f32([2.0, 5.0, 5.0, 1.0, 5.0, -1.0, 0.5, 4.0]),
            "temperature": 1.0,
            "top_p": 0.9,
            "seed": 7,
            "index": 2,
        },
        {
            "why": "a small nucleus at a high temperature",
            "logits": as_f32(rng.standard_normal(16) * 3),
            "temperature": 1.5,
            "top_p": 0.5,
            "seed": 11,
            "index": 0,
        },
        {
            "why": "a token far below the best (most of the mass is in the long tail)",
            "logits": as_f32([12.0] + [0.0] * 62 + [-3.0]),
            "temperature": 2.0,
            "top_p": 1.0,
            "seed": 0,
            "index": 0,
        },
        {
            "why": "near a boundary: division in float32 (not float64) would choose token 0",
            "logits": as_f32([0.0, -0.2769584059715271]),
            "temperature": 0.7,
            "top_p": 1.0,
            "seed": 0,
            "index": 5,
            "near_boundary": True,
        },
    ]
    for case in cases:
        logits = np.asarray(case["logits"], dtype=np.float32)
        token, lo, hi = reference_choice(
            case["logits"], case["index"], case["temperature"], case["top_p"], case["seed"]
        )
        assert token == choose_token(
            logits, case["index"], temperature=case["temperature"], top_p=case["top_p"], seed=case["seed"]
        ), case["why"]
        case["token"] = token
        if lo is not None:
            case.update(u=uniform(case["seed"], case["index"]), lo=lo, hi=hi)
        _check_margin(case)
    # A vocabulary-sized case, as raw little-endian float32 bytes: many draws from one distribution.
    big = (rng.standard_normal(4096) * 3).astype("<f4")
    big_case: dict[str, Any] = {
        "why": "4096 logits, 24 draws",
        "logits_f32le_b64": base64.b64encode(big.tobytes()).decode(),
        "temperature": 0.8,
        "top_p": 0.95,
        "seed": 7,
        "draws": [],
    }
    for index in range(24):
        token, lo, hi = reference_choice(as_f32(big), index, 0.8, 0.95, 7)
        assert token == choose_token(big, index, temperature=0.8, top_p=0.95, seed=7)
        draw = {"index": index, "token": token, "u": uniform(7, index), "lo": lo, "hi": hi}
        _check_margin(draw)
        big_case["draws"].append(draw)
    return {
        "about": "uniform(seed, index) = float64(big-endian uint64 of BLAKE2b-64(seed_be8 || index_be8, "
        "personal 'dinet-sampler' zero-padded to 16 bytes)) / 2^64; then choose(logits, index, "
        "temperature, top_p, seed) -> token. `lo`, `hi`: the token is chosen exactly when "
        "lo <= u < hi. Logits are float32 values (as engines give them), written as JSON numbers.",
        "personal_hex": b"dinet-sampler".ljust(16, b"\0").hex(),
        "uniform": draws,
        "choose": cases,
        "choose_many": big_case,
    }


def _check_margin(case: dict[str, Any]) -> None:
    if case.get("lo") is None:
        return
    margin = min(case["u"] - case["lo"], case["hi"] - case["u"])
    floor = 1e-13 if case.get("near_boundary") else MIN_MARGIN
    assert margin > floor, (case, margin)
    if case.get("near_boundary"):
        assert margin < 1e-7, margin  # it must be close enough to tell float32 from float64


def text() -> dict[str, Any]:
    e, wave, euro = "é".encode(), "🌊".encode(), "€".encode()
    cases = [
        {
            "why": "a character split across tokens comes with the token that completes it",
            "stops": [],
            "prefix": [],
            "pieces": [e[:1], e[1:] + b"t", wave[:2], wave[2:]],
        },
        {
            "why": "invalid bytes are dropped; an unfinished character at the end is dropped",
            "stops": [],
            "prefix": [],
            "pieces": [b"ok", b"\xff", b" then", euro[:2]],
        },
        {
            "why": "a stop string ends the text before it; the token that holds its start is cut",
            "stops": ["END"],
            "prefix": [],
            "pieces": [b"Hello", b" E", b"N", b"Dless", b"more"],
        },
        {
            "why": "text that may begin a stop string is held back, then released when it does not",
            "stops": ["<|im_end|>"],
            "prefix": [],
            "pieces": [b"a <", b"|im", b" b", b"c"],
        },
        {
            "why": "a resumed answer: prefix tokens prime the decoder and send nothing",
            "stops": [],
            "prefix": [b"caf", e[:1]],
            "pieces": [e[1:] + b"!", b" ok"],
        },
    ]
    out = []
    for case in cases:
        completion = CompletionText(tuple(case["stops"]))
        for piece in case["prefix"]:
            completion.prime(piece)
        first = len(case["prefix"])
        tokens, answer, stopped = [], "", False
        for offset, piece in enumerate(case["pieces"]):
            released, stopped = completion.push(first + offset, 1000 + offset, piece)
            tokens.append(
                {
                    "index": first + offset,
                    "token_id": 1000 + offset,
                    "bytes_hex": piece.hex(),
                    "releases": [_frame(f) for f in released],
                }
            )
            answer += "".join(f.text for f in released)
            if stopped:
                break
        at_end = [] if stopped else completion.finish()
        answer += "".join(f.text for f in at_end)
        out.append(
            {
                "why": case["why"],
                "stops": case["stops"],
                "prefix_hex": [p.hex() for p in case["prefix"]],
                "tokens": tokens,
                "stopped": stopped,
                "finish_releases": [_frame(f) for f in at_end],
                "answer": answer,
            }
        )
    return {
        "about": "Token bytes in, token frames out (the node's side of /dinet/infer/1 and of a last "
        "stage's shard_sampled): `releases` are the frames sent after each token; with "
        "`stopped` a stop string ended the completion (no later token is pushed), else "
        "`finish_releases` are sent at its end. The answer is the frames' texts joined "
        "in order.",
        "cases": out,
    }


def _frame(frame: Any) -> dict[str, Any]:
    return {"index": frame.index, "token_id": frame.token_id, "text": frame.text}


# ---------------------------------------------------------------- frames, hashes, messages


def framing() -> dict[str, Any]:
    token = '{"kind":"token","index":0,"token_id":9,"text":"é"}'
    payloads = [b"", b'{"kind":"queued","waiting":2}', token.encode()]
    two = encode_frame(payloads[1]) + encode_frame(payloads[2])
    ids = np.array([[1], [504], [49151]], dtype=np.int32)
    hidden = (np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5) / 4
    return {
        "about": "A frame is a 4-byte big-endian length, then that many payload bytes; at most 1048576. "
        "`streams` are byte streams and what a reader makes of them: frames, then `end` (a "
        "clean end between frames), `truncated` or `too_large`.",
        "max_frame": 1 << 20,
        "frames": [{"payload_hex": p.hex(), "frame_hex": encode_frame(p).hex()} for p in payloads],
        "streams": [
            {"bytes_hex": "", "frames_hex": [], "then": "end"},
            {"bytes_hex": two.hex(), "frames_hex": [payloads[1].hex(), payloads[2].hex()], "then": "end"},
            {"bytes_hex": "000000", "frames_hex": [], "then": "truncated"},
            {
                "bytes_hex": (encode_frame(payloads[1]) + bytes.fromhex("0000000a7b7d")).hex(),
                "frames_hex": [payloads[1].hex()],
                "then": "truncated",
            },
            {"bytes_hex": "00100000", "frames_hex": [], "then": "truncated"},
            {"bytes_hex": "00100001", "frames_hex": [], "then": "too_large"},
        ],
        "tensors": [
            {
                "header": json.loads(encode(ShardStep(session_id="s1", seq=0, rows=3, dtype="i32"))),
                "array": ids.tolist(),
                "bytes_hex": tensor_frames(ShardStep(session_id="s1", seq=0, rows=3, dtype="i32"), ids).hex(),
            },
            {
                "header": json.loads(encode(ShardHidden(seq=4, rows=2, dtype="f32"))),
                "array": hidden.tolist(),
                "bytes_hex": tensor_frames(ShardHidden(seq=4, rows=2, dtype="f32"), hidden).hex(),
            },
            {
                "header": json.loads(encode(ShardHidden(seq=4, rows=2, dtype="f16"))),
                "array": hidden.tolist(),
                "bytes_hex": tensor_frames(
                    ShardHidden(seq=4, rows=2, dtype="f16"), hidden.astype(np.float16)
                ).hex(),
            },
        ],
    }


def hashes() -> dict[str, Any]:
    leaves = [hashlib.sha256(bytes([i])).digest() for i in range(5)]
    merkle = []
    for n in (0, 1, 2, 3, 5):
        root = merkle_root(leaves[:n])
        merkle.append({"leaves": [h.hex() for h in leaves[:n]], "root": root.hex()})
    h = hashlib.sha256
    assert merkle[3]["root"] == h(h(leaves[0] + leaves[1]).digest() + leaves[2]).hexdigest()
    key_hex = dht_key(MODEL_HASH)
    assert key_hex == "1220" + h(f"dinet-model:{MODEL_HASH}".encode()).hexdigest()
    return {
        "about": "Merkle roots over chunk hashes (an odd last node goes up unchanged; no leaves: "
        "sha256 of nothing), the DHT provider key of a model hash (the bytes of `key_hex`), "
        "the provider key of a model id, and output hashes of token ids.",
        "merkle": merkle,
        "dht_key": {"model_hash": MODEL_HASH, "key_hex": key_hex},
        "model_id_key": {
            "model_id": "SmolLM2-135M-Instruct",
            "key_hex": model_id_key("SmolLM2-135M-Instruct"),
        },
        "output_hash": [{"token_ids": ids, "hash": output_hash(ids)} for ids in ([], [0, 1, 2**32 - 1])],
    }


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
_HI = '{"prompt":"Hi"}'
_ID = '"kind":"infer","request_id":"r1"'


def infer(params: str = _HI, head: str = _ID, tail: str = "") -> str:
    return "{" + head + ',"params":' + params + tail + "}"


def hi(extra: str) -> str:
    """Params with a prompt and `extra` fields."""
    return '{"prompt":"Hi",' + extra + "}"


def verify(params: str = _HI, tokens: str = "[1,2]", model_hash: bool = True) -> str:
    head = '"kind":"verify","request_id":"v1"' + (f',"model_hash":"{MODEL_HASH}"' if model_hash else "")
    return "{" + head + ',"params":' + params + ',"tokens":' + tokens + "}"


def chunks(indices: list[int], model_hash: str = MODEL_HASH) -> str:
    return '{"kind":"chunk_request","model_hash":"' + model_hash + '","indices":' + json.dumps(indices) + "}"


_END = '"usage":{"prompt_tokens":5,"completion_tokens":0},"ttft_ms":12,"tokens_per_s":0}'
MESSAGES: list[tuple[str, str, str]] = [  # decoder, payload, why
    ("infer_request", infer(), "the least request: every other field takes its default"),
    (
        "infer_request",
        '{"params": {"messages": [{"content": "Hi", "role": "user"}], "seed": 5},\n'
        ' "request_id": "r1", "kind": "infer"}',
        "fields in any order, whitespace anywhere",
    ),
    ("infer_request", infer(head='"request_id":"r1"'), "kind may be left out of a request (send it anyway)"),
    ("infer_request", infer(hi('"temperature":1')), "an integer where a number is due"),
    ("infer_request", infer(head=f'"kind":"infer","request_id":"{"é" * 64}"'), "64 characters, not bytes"),
    (
        "infer_request",
        infer(hi('"seed":9223372036854775807,"max_tokens":4096')),
        "the largest seed and max_tokens",
    ),
    ("infer_request", infer(hi('"stop":["a","bb","ccc","dddd"]')), "four stop strings"),
    ("infer_request", infer(head=_ID + ',"model_id":null,"model_hash":null'), "null for an optional field"),
    (
        "infer_request",
        infer(hi('"prefix_tokens":[-1]')),
        "a negative prefix token decodes (the node's engine then answers bad_request)",
    ),
    ("infer_request", infer(tail=',"extra":1'), "an unknown field"),
    ("infer_request", infer(hi('"logprobs":true')), "an unknown field inside params"),
    ("infer_request", infer(head='"kind":"infer"'), "no request_id"),
    ("infer_request", infer(head='"kind":"infer","request_id":""'), "an empty request_id"),
    ("infer_request", infer(head=f'"kind":"infer","request_id":"{"a" * 65}"'), "65 characters"),
    ("infer_request", infer(head='"kind":"infer","request_id":7'), "a number for a string"),
    ("infer_request", infer("{}"), "neither prompt nor messages"),
    ("infer_request", infer(hi('"messages":[]')), "both prompt and messages"),
    ("infer_request", infer('{"messages":[{"role":"function","content":"x"}]}'), "an unknown role"),
    (
        "infer_request",
        infer(
            '{"messages":[{"role":"user","content":"Weather?"},{"role":"assistant","content":"",'
            '"tool_calls":[{"id":"c1","name":"get_weather","arguments":"{\\"city\\": \\"Paris\\"}"}]},'
            '{"role":"tool","content":"sunny","tool_call_id":"c1"}],'
            '"tools":[{"name":"get_weather","parameters":"{\\"type\\": \\"object\\"}"}]}'
        ),
        "tools, an assistant's tool call and its result",
    ),
    ("infer_request", infer('{"messages":[{"role":"tool","content":"x"}]}'), "a tool message names its call"),
    (
        "infer_request",
        infer(
            '{"messages":[{"role":"user","content":"x","tool_calls":[{"id":"c","name":"f","arguments":"{}"}]}]}'
        ),
        "only an assistant makes tool calls",
    ),
    ("infer_request", infer(hi('"tools":[{"name":"f"}]')), "tools go with messages, not a prompt"),
    (
        "infer_request",
        infer('{"messages":[{"role":"user","content":"x"}],"tools":[{"name":"f","parameters":"[]"}]}'),
        "a tool's parameters are a JSON object's text",
    ),
    (
        "infer_request",
        infer('{"messages":[{"role":"user","content":"x"}],"tools":[{"name":"a b"}]}'),
        "a tool's name is letters, digits, _ . -",
    ),
    ("infer_request", infer(hi('"max_tokens":0')), "max_tokens below 1"),
    ("infer_request", infer(hi('"max_tokens":4097')), "max_tokens above 4096"),
    ("infer_request", infer(hi('"max_tokens":5.0')), "a fraction where an integer is due"),
    ("infer_request", infer(hi('"temperature":2.5')), "temperature above 2"),
    ("infer_request", infer(hi('"top_p":0')), "top_p of 0"),
    ("infer_request", infer(hi('"seed":-1')), "a negative seed"),
    ("infer_request", infer(hi('"seed":9223372036854775808')), "a seed of 2^63"),
    ("infer_request", infer(hi('"stop":["a","b","c","d","e"]')), "five stop strings"),
    ("infer_request", infer(hi('"stop":[""]')), "an empty stop string"),
    ("infer_request", infer(hi('"temperature":NaN')), "NaN is not JSON"),
    ("infer_request", infer(head='"kind":"ask","request_id":"r1"'), "an unknown kind"),
    ("infer_reply", '{"kind":"token","index":0,"token_id":9,"text":""}', "a token frame"),
    ("infer_reply", '{"kind":"queued","waiting":0}', "a queued frame"),
    (
        "infer_reply",
        '{"kind":"end","finish_reason":"stop",' + _END,
        "an end frame without receipt, model_id, model_hash",
    ),
    ("infer_reply", '{"kind":"error","code":"busy","message":"2 generating and 8 queued"}', "an error frame"),
    ("infer_reply", '{"index":0,"token_id":9,"text":""}', "a reply without kind"),
    ("infer_reply", '{"kind":"error","code":"teapot","message":""}', "an unknown error code"),
    ("infer_reply", '{"kind":"end","finish_reason":"eos",' + _END, "an unknown finish_reason"),
    ("infer_reply", '{"kind":"token","index":0,"token_id":9,"text":"","logprob":-1}', "an unknown field"),
    ("verify_request", verify(), "the least verify request"),
    ("verify_request", verify(model_hash=False), "no model_hash"),
    ("verify_request", verify(hi('"prefix_tokens":[3]')), "prefix_tokens in a verify request"),
    ("verify_request", verify(tokens="[]"), "no tokens"),
    (
        "verify_reply",
        '{"positions":[{"index":0,"token_id":1,"rank":0,"logprob":-0.5,"best_logprob":-0.5}],'
        '"prompt_tokens":3,"elapsed_ms":1.5,"kind":"scores"}',
        "scores at temperature 0",
    ),
    (
        "verify_reply",
        '{"kind":"scores","prompt_tokens":3,"elapsed_ms":1.5,"positions":[{"index":0,'
        '"token_id":1,"rank":0,"logprob":0.5,"best_logprob":0}]}',
        "a positive log-probability",
    ),
    ("manifest_query", '{"kind":"manifest_query"}', "include_known defaults to true"),
    ("manifest_query", '{"kind":"manifest_query","include_known":1}', "1 is not a boolean"),
    ("manifest_reply", '{"kind":"manifests","manifests":[]}', "an empty list"),
    (
        "shard_request",
        '{"kind":"shard_open","session_id":"s1","span":[0,10],"params":{"prompt":"Hi"}}',
        "the least shard_open",
    ),
    (
        "shard_request",
        '{"kind":"shard_step","session_id":"s1","seq":0,"rows":3,"dtype":"i32"}',
        "sample defaults to true",
    ),
    (
        "shard_request",
        '{"kind":"shard_step","session_id":"s1","seq":0,"rows":3,"dtype":"f64"}',
        "an unknown dtype",
    ),
    (
        "shard_request",
        '{"kind":"shard_step","session_id":"s1","seq":5,"rows":3,"dtype":"i32","keep":40,"draft":[17,4]}',
        "a speculative step: the cache keeps 40 positions, two guessed tokens follow the first row",
    ),
    (
        "shard_request",
        '{"kind":"shard_step","session_id":"s1","seq":5,"rows":1,"dtype":"i32","keep":-1}',
        "keep is not negative",
    ),
    (
        "shard_request",
        '{"kind":"shard_open","session_id":"s1","span":[0,10],"params":{"prompt":"Hi"},"draft":"model"}',
        "the first stage guesses with its draft model",
    ),
    (
        "shard_request",
        '{"kind":"shard_open","session_id":"s1","span":[0,10],"params":{"prompt":"Hi"},"draft":"oracle"}',
        "an unknown draft",
    ),
    (
        "shard_request",
        '{"kind":"shard_open","session_id":"s1","span":[0,10],"params":{"prompt":"Hi"},"nonce":"n1",'
        '"audit_commit":"abababababababababababababababababababababababababababababababab"}',
        "a checked session",
    ),
    (
        "shard_request",
        '{"kind":"shard_open","session_id":"s1","span":[0,10],"params":{"prompt":"Hi"},"audit_commit":"ab"}',
        "an audit commitment is 64 hex digits",
    ),
    ("shard_request", '{"kind":"shard_receipt_query","session_id":"s1"}', "a receipt query"),
    ("shard_request", '{"kind":"shard_reveal","session_id":"s1","seed":"00ff"}', "a reveal with its seed"),
    ("shard_request", '{"kind":"shard_reveal","session_id":"s1","seed":"xyz"}', "a seed is hex"),
    (
        "shard_reply",
        '{"kind":"shard_revealed","seq":0,"rows":5,"dtype":"i32","sample":false,"out_rows":5,"out_dtype":"f32"}',
        "a revealed prompt step",
    ),
    ("shard_reply", '{"kind":"shard_sampled","seq":3,"index":0,"token_id":9}', "the least shard_sampled"),
    ("shard_reply", '{"kind":"shard_opened","session_id":"s1","n_embd":576}', "prompt_ids defaults to []"),
    ("chunk_query", chunks([0, 1]), "two chunks"),
    ("chunk_query", chunks([0], MODEL_HASH.upper()), "an upper-case hash"),
    ("chunk_query", chunks(list(range(17))), "seventeen chunks in one request"),
    ("chunk_reply", '{"kind":"chunk","index":1,"size":1048576}', "a chunk header"),
    ("chunk_reply", '{"kind":"chunk","index":1,"size":1048577}', "a chunk over 1 MiB"),
]


def messages() -> dict[str, Any]:
    out = []
    for decoder, payload, why in MESSAGES:
        case: dict[str, Any] = {"decoder": decoder, "why": why, "payload": payload}
        try:
            decoded = DECODERS[decoder](payload.encode())
        except Exception as exc:  # noqa: BLE001 - any refusal is the expected outcome here
            case["valid"] = False
            case["_error"] = type(exc).__name__
        else:
            case["valid"] = True
            case["decoded"] = json.loads(encode(decoded))
        out.append(case)
    for case in out:
        assert case.pop("_error", "MalformedMessage") in {"MalformedMessage", "ValidationError"}, case
    return {
        "about": "Payloads and what a receiver makes of them: `valid` ones decode to `decoded` (every "
        "field, defaults filled in, as the reference encodes it); the others are refused "
        "(bad_request on a node). `decoder` names the message set a receiver expects.",
        "cases": out,
    }


def main() -> None:
    files = {
        "keys": keys(),
        "manifest": manifest(),
        "receipt": receipt(),
        "model_card": model_card(),
        "model_versions": model_versions(),
        "sampler": sampler(),
        "text": text(),
        "framing": framing(),
        "hashes": hashes(),
        "messages": messages(),
    }
    for name, content in files.items():
        path = HERE / f"{name}.json"
        path.write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(
            f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
