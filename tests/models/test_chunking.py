"""Chunking, model cards and bad model files, on tiny generated GGUFs."""

from __future__ import annotations

import base64

import pytest
from tests.models._tiny import write_tiny

from dinet.errors import BadModelFile, ModelCardError
from dinet.models._gguf import read_layout
from dinet.models.card import build_card, verify_model_card
from dinet.models.hashing import CHUNK_SIZE, chunk_spans, model_hash
from dinet.wire.chunks import SignedModelCard
from dinet.wire.keys import SigningKey


def test_chunks_start_at_every_tensor_and_never_exceed_the_chunk_size(tmp_path):
    path = write_tiny(tmp_path / "a.gguf")
    spans = chunk_spans(path)
    starts = {offset for offset, _ in spans}
    assert all(t.offset in starts for t in read_layout(path).tensors)
    assert all(0 < size <= CHUNK_SIZE for _, size in spans)
    assert sum(size for _, size in spans) == path.stat().st_size
    assert [o for o, _ in spans] == sorted(starts)


def test_a_changed_tensor_changes_only_its_own_chunks(tmp_path):
    key = SigningKey.generate()
    v1 = verify_model_card(build_card(write_tiny(tmp_path / "v1.gguf"), "tiny", "1", key))
    v2 = verify_model_card(
        build_card(write_tiny(tmp_path / "v2.gguf", change="blk.0.attn_norm.weight"), "tiny", "2", key)
    )
    assert v1.model_hash != v2.model_hash
    changed = [i for i, (a, b) in enumerate(zip(v1.chunk_hashes, v2.chunk_hashes, strict=True)) if a != b]
    assert len(changed) == 1
    assert v2.chunk_sizes[changed[0]] < 4096  # the norm tensor alone, not a neighbour


def test_grown_metadata_changes_no_tensor_chunk(tmp_path):
    key = SigningKey.generate()
    v1 = verify_model_card(build_card(write_tiny(tmp_path / "v1.gguf"), "tiny", "1", key))
    v2 = verify_model_card(
        build_card(write_tiny(tmp_path / "v2.gguf", extra_meta="x" * 5000), "tiny", "2", key)
    )
    assert v1.file_size != v2.file_size
    shared = set(v1.chunk_hashes) & set(v2.chunk_hashes)
    assert len(shared) == len(v1.chunk_hashes) - 1  # everything but the header chunk


def test_model_card_describes_the_gguf(tmp_path):
    signed = build_card(write_tiny(tmp_path / "a.gguf"), "tiny", "1", SigningKey.generate())
    m = verify_model_card(signed, model_hash(tmp_path / "a.gguf"))
    assert (m.gguf.architecture, m.gguf.quantization, m.gguf.layers, m.gguf.context, m.gguf.license) == (
        "llama",
        "all_f32",
        1,
        256,
        "apache-2.0",
    )


def test_forged_or_inconsistent_model_cards_are_refused(tmp_path):
    signed = build_card(write_tiny(tmp_path / "a.gguf"), "tiny", "1", SigningKey.generate())
    m = verify_model_card(signed)
    with pytest.raises(ModelCardError, match="not"):
        verify_model_card(signed, "0" * 64)
    tampered = signed.body.replace('"tiny"', '"evil"')
    with pytest.raises(ModelCardError, match="signature"):
        verify_model_card(SignedModelCard(body=tampered, signature=signed.signature))
    # a publisher signing a model card whose chunk hashes do not give its root
    key = SigningKey.generate()
    bad = m.model_copy(update={"chunk_hashes": ("ab" * 32,) + m.chunk_hashes[1:], "publisher": key.peer_id})
    body = bad.model_dump_json()
    signature = base64.b64encode(key.sign(body.encode())).decode()
    resigned = SignedModelCard(body=body, signature=signature)
    with pytest.raises(ModelCardError, match="model hash"):
        verify_model_card(resigned)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a gguf at all" * 10,
        b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 16,
        b"GGUF\x03\x00\x00\x00" + (1).to_bytes(8, "little") + (0).to_bytes(8, "little") + b"\x00" * 8,
    ],
    ids=["empty", "text", "huge-counts", "truncated-tensor-table"],
)
def test_garbage_files_are_refused_with_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(BadModelFile):
        model_hash(path)


def test_a_truncated_model_is_refused(tmp_path):
    path = write_tiny(tmp_path / "a.gguf")
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(BadModelFile, match="past the end"):
        model_hash(path)
