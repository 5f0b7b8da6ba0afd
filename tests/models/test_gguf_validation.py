"""The GGUF header gate in front of llama.cpp: bad files get BadModelFile, say why, and
never make the reader allocate what a header claims, loop long, or crash.

Files are built byte by byte here (`Gguf`), so that each can break exactly one rule."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from dinet.engine import WorkerEngine, default_model_path
from dinet.errors import BadModelFile
from dinet.models._gguf import GGUFLayout, read_layout

F32, Q4_1, U8, U32, STRING, ARRAY = 0, 3, 0, 4, 8, 9


def s(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def kv(key: bytes, kind: int, value: bytes) -> bytes:
    return s(key) + struct.pack("<I", kind) + value


def strings(*items: bytes) -> bytes:
    return struct.pack("<IQ", STRING, len(items)) + b"".join(s(i) for i in items)


@dataclass(frozen=True)
class Gguf:
    """A small valid GGUF: metadata (with a tokenizer-like string array) and two f32 tensors."""

    magic: bytes = b"GGUF"
    version: int = 3
    kvs: tuple[bytes, ...] = (
        kv(b"general.architecture", STRING, s(b"llama")),
        kv(b"general.alignment", U32, struct.pack("<I", 32)),
        kv(b"tokenizer.ggml.tokens", ARRAY, strings(b"a", b"b", b"<s>")),
        kv(b"tokenizer.ggml.scores", ARRAY, struct.pack("<IQ", 6, 3) + bytes(12)),
    )
    tensors: tuple[tuple[bytes, tuple[int, ...], int, int], ...] = (
        (b"a", (32,), F32, 0),
        (b"b", (32, 2), F32, 128),
    )
    n_tensors: int | None = None
    n_kv: int | None = None
    data_bytes: int = 384  # 128 + 256: both tensors, back to back

    def header(self) -> bytes:
        head = self.magic + struct.pack(
            "<IQQ",
            self.version,
            len(self.tensors) if self.n_tensors is None else self.n_tensors,
            len(self.kvs) if self.n_kv is None else self.n_kv,
        )
        head += b"".join(self.kvs)
        for name, dims, kind, offset in self.tensors:
            head += s(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
            head += struct.pack("<IQ", kind, offset)
        return head + bytes(-len(head) % 32)

    def bytes(self) -> bytes:
        return self.header() + bytes(range(256)) * (self.data_bytes // 256) + bytes(self.data_bytes % 256)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.bytes())
        return path


GOOD = Gguf()
BASE_KVS = GOOD.kvs


def one_kv(key: bytes, kind: int, value: bytes) -> dict[str, object]:
    return {"kvs": (kv(key, kind, value),)}


def one_tensor(dims: tuple[int, ...], kind: int = F32, offset: int = 0, name: bytes = b"a") -> dict:
    return {"tensors": ((name, dims, kind, offset),)}


TWO = ((b"a", (32,), F32, 0),)
# case: (what to change in GOOD, the reason the error must give)
BAD: dict[str, tuple[dict[str, object], str]] = {
    "bad magic": ({"magic": b"GGUX"}, "no GGUF magic"),
    "version 1": ({"version": 1}, "unsupported GGUF version 1"),
    "version 4": ({"version": 4}, "unsupported GGUF version 4"),
    "big-endian": ({"version": 3 << 24}, "unsupported GGUF version"),
    "2^63 tensors": ({"n_tensors": 1 << 63}, "claims 9223372036854775808 tensors"),
    "2^40 metadata entries": ({"n_kv": 1 << 40}, "1099511627776 metadata entries"),
    "more entries than written": ({"n_kv": 5000}, "runs past the end"),
    "key of 2^60 bytes": ({"kvs": (struct.pack("<Q", 1 << 60) + b"k",)}, "key of 1152921504606846976 bytes"),
    "key of 70 kB": (one_kv(b"k" * 70_000, U32, bytes(4)), "key of 70000 bytes is longer"),
    "unknown value type": (one_kv(b"x", 99, bytes(8)), "unknown GGUF value type 99"),
    "string of 2^62 bytes": (one_kv(b"x", STRING, struct.pack("<Q", 1 << 62)), "of 4611686018427387904"),
    "array of 2^61 bytes": (one_kv(b"x", ARRAY, struct.pack("<IQ", U8, 1 << 61)), "more than the file holds"),
    "array of 2^40 strings": (one_kv(b"x", ARRAY, struct.pack("<IQ", STRING, 1 << 40)), "more than the file"),
    "huge string in an array": (one_kv(b"x", ARRAY, struct.pack("<IQQ", STRING, 1, 1 << 50)), "in an array"),
    "nested arrays": (one_kv(b"x", ARRAY, struct.pack("<IQIQ", ARRAY, 1, U8, 0)), "unsupported item type 9"),
    "duplicate key": ({"kvs": BASE_KVS + (BASE_KVS[0],)}, "appears twice"),
    "alignment as a string": (one_kv(b"general.alignment", STRING, s(b"32")), "not u32"),
    "alignment 24": (one_kv(b"general.alignment", U32, struct.pack("<I", 24)), "bad GGUF alignment 24"),
    "alignment 0": (one_kv(b"general.alignment", U32, struct.pack("<I", 0)), "bad GGUF alignment 0"),
    "tensor name of 100 bytes": (one_tensor((32,), name=b"n" * 100), "tensor name of 100 bytes"),
    "0 dimensions": (one_tensor(()), "has 0 dimensions"),
    "5 dimensions": (one_tensor((1, 1, 1, 1, 32)), "has 5 dimensions"),
    "dimension of 2^63": (one_tensor((1 << 63,)), "beyond int64"),
    "2^80 elements": (one_tensor((1 << 40, 1 << 40)), "claims 1208925819614629174706176 elements"),
    "unknown tensor type": (one_tensor((32,), kind=200), "unknown type 200"),
    "row not whole blocks": (one_tensor((33,), kind=Q4_1), "not a whole number of 32-blocks"),
    "tensor offset beyond the file": (one_tensor((32,), offset=1 << 40), "data offset 1099511627776"),
    "overlapping tensors": ({"tensors": TWO + ((b"b", (32, 2), F32, 0),)}, "offset 0, expected 128"),
    "misaligned tensor": ({"tensors": TWO + ((b"b", (32, 2), F32, 130),)}, "offset 130, expected 128"),
    "duplicate tensor name": ({"tensors": TWO + ((b"a", (32, 2), F32, 128),)}, "names a tensor twice"),
    "data section past EOF": ({"data_bytes": 300}, "'b' runs past the end"),
    "huge tensor past EOF": (one_tensor((1 << 30, 1 << 20)), "'a' runs past the end"),
}


def bad_file(case: str, path: Path) -> Path:
    return replace(GOOD, **BAD[case][0]).write(path)  # type: ignore[arg-type]


def test_the_byte_built_file_and_the_real_model_pass() -> None:
    real = read_layout(default_model_path())
    assert len(real.tensors) == 272 and real.metadata["general.architecture"] == "llama"


def test_a_good_file_passes(tmp_path: Path) -> None:
    layout = read_layout(GOOD.write(tmp_path / "good.gguf"))
    assert [t.size for t in layout.tensors] == [128, 256]
    assert layout.metadata["tokenizer.ggml.tokens"] == 3  # arrays as their length


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_each_broken_rule_is_refused_with_its_reason(tmp_path: Path, case: str) -> None:
    path = bad_file(case, tmp_path / "bad.gguf")
    with pytest.raises(BadModelFile, match="is not a usable GGUF model") as caught:
        read_layout(path)
    assert str(path) in str(caught.value) and BAD[case][1] in str(caught.value)


def test_truncation_anywhere_is_refused(tmp_path: Path) -> None:
    data = GOOD.bytes()
    header = len(GOOD.header())
    cuts = [0, 3, 4, 7, 8, 16, 23, 24, 30, 60, header // 2, header - 40, header - 1, header, header + 200,
            len(data) - 1]  # fmt: skip
    path = tmp_path / "cut.gguf"
    for cut in cuts:
        path.write_bytes(data[:cut])
        with pytest.raises(BadModelFile):
            read_layout(path)


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    rng = random.Random(7)
    path = tmp_path / "noise.gguf"
    for size in (1, 23, 24, 100, 4096, 100_000):
        for prefix in (b"", b"GGUF\x03\x00\x00\x00"):
            path.write_bytes(prefix + rng.randbytes(size))
            with pytest.raises(BadModelFile):
                read_layout(path)


EXTREMES = [0, 1, 0xFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, 1 << 62, (1 << 63) - 1, (1 << 64) - 1]


def mutate(data: bytes, rng: random.Random, header_len: int) -> bytes:
    out = bytearray(data)
    how = rng.randrange(4)
    if how == 0:  # flip a few bytes in the header
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(header_len)] = rng.randrange(256)
    elif how == 1:  # an extreme u64 somewhere in the header
        at = rng.randrange(header_len - 8)
        out[at : at + 8] = struct.pack("<Q", rng.choice(EXTREMES))
    elif how == 2:  # an extreme u32
        at = rng.randrange(header_len - 4)
        out[at : at + 4] = struct.pack("<I", rng.choice(EXTREMES) & 0xFFFFFFFF)
    else:  # cut short
        del out[rng.randrange(len(out)) :]
    return bytes(out)


def check_sane(layout: GGUFLayout, size: int) -> None:
    """A mutant that passes must still be a file llama.cpp can lay out."""
    for t in layout.tensors:
        assert 0 <= t.offset and t.offset + t.size <= size


@pytest.mark.timeout(120)  # a hang fails here instead of stalling the suite
def test_hundreds_of_mutated_headers_never_crash_or_hang(tmp_path: Path) -> None:
    rng = random.Random(2024)
    data, header_len = GOOD.bytes(), len(GOOD.header())
    path = tmp_path / "mutant.gguf"
    refused = 0
    for _ in range(400):
        mutant = mutate(data, rng, header_len)
        path.write_bytes(mutant)
        try:
            check_sane(read_layout(path), len(mutant))
        except BadModelFile:
            refused += 1
    assert refused > 200  # most mutations break a rule (and none raised anything else)


@pytest.mark.timeout(120)
def test_mutations_of_the_real_models_header_never_crash(tmp_path: Path) -> None:
    real = default_model_path()
    data_offset = read_layout(real).data_offset
    header = real.read_bytes()[:data_offset]
    size = real.stat().st_size
    rng = random.Random(99)
    path = tmp_path / "mutant.gguf"
    for _ in range(20):
        mutant = mutate(header, rng, len(header))
        with path.open("wb") as f:
            f.write(mutant)
            f.truncate(size)  # sparse: the tensor data region costs no disk
        try:
            check_sane(read_layout(path), size)
        except BadModelFile:
            pass


async def test_the_worker_start_path_refuses_before_llama_cpp_sees_it(tmp_path: Path) -> None:
    path = bad_file("huge tensor past EOF", tmp_path / "bad.gguf")
    engine = WorkerEngine(path, threads=1, preflight=read_layout)
    with pytest.raises(BadModelFile, match="past the end"):
        await engine.start()
    assert engine.pid is None and engine.restarts == 0  # no worker was ever spawned
    assert not engine.available and "past the end" in (engine.failed or "")
    await engine.aclose()


def din(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dinet", *args], capture_output=True, text=True, timeout=60)


def test_import_and_node_refuse_a_bad_file_in_one_clear_line(tmp_path: Path) -> None:
    bad = bad_file("data section past EOF", tmp_path / "bad.gguf")
    for args in (("model", "import", str(bad)), ("node", "--no-mdns", "--model", str(bad))):
        done = din(*args, "--home", str(tmp_path / "home"))
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1, done.stderr
        assert lines[0].startswith("error: ") and "is not a usable GGUF model" in lines[0]
    models = tmp_path / "home" / "models"
    assert not models.exists() or not any(models.iterdir())  # nothing of it was stored
