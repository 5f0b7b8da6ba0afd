"""A small, strict reader of a GGUF file's header: metadata and tensor layout.

`gguf.GGUFReader` parses every array (the tokenizer's 49k strings) into numpy
objects and takes seconds; chunking needs only where each tensor's bytes start,
so this reads the header once, skipping arrays, and checks every length against
the file size so that garbage cannot make it allocate or loop for long.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import gguf

from dinet.errors import BadModelFile

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_COUNT = 1_000_000  # tensors or metadata entries: real models have a few thousand
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorSpan:
    name: str
    offset: int  # absolute, in the file
    size: int


@dataclass(frozen=True)
class GGUFLayout:
    version: int
    metadata: dict[str, object]  # scalars and strings; arrays as their length
    data_offset: int
    tensors: tuple[TensorSpan, ...]  # by offset


class _Reader:
    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self._size = size

    def take(self, n: int) -> bytes:
        data = self._f.read(n)
        if len(data) != n:
            raise BadModelFile(f"GGUF header ends early (at byte {self._f.tell()} of {self._size})")
        return data

    def unpack(self, fmt: str) -> object:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def u32(self) -> int:
        return int(self.unpack("<I"))  # type: ignore[call-overload]

    def u64(self) -> int:
        return int(self.unpack("<Q"))  # type: ignore[call-overload]

    def string(self) -> str:
        n = self.u64()
        if n > self._size - self._f.tell():
            raise BadModelFile(f"GGUF string of {n} bytes runs past the end of the file")
        return self.take(n).decode("utf-8", errors="replace")

    def skip(self, n: int) -> None:
        if n > self._size - self._f.tell():
            raise BadModelFile("GGUF array runs past the end of the file")
        self._f.seek(n, 1)

    def value(self, kind: int) -> object:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.u32(), self.u64()
            if count > self._size:
                raise BadModelFile(f"GGUF array claims {count} items")
            if item in _SCALARS:
                self.skip(count * struct.calcsize(_SCALARS[item]))
            else:
                for _ in range(count):
                    self.value(item)
            return count
        raise BadModelFile(f"unknown GGUF value type {kind}")


def read_layout(path: Path) -> GGUFLayout:
    """The header of the GGUF file at `path`, or BadModelFile."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            return _parse(_Reader(f, size), size)
    except OSError as exc:
        raise BadModelFile(f"cannot read {path}: {exc.strerror}") from None


def _parse(r: _Reader, size: int) -> GGUFLayout:
    if size < 24 or r.take(4) != MAGIC:
        raise BadModelFile("not a GGUF file (no GGUF magic)")
    version = r.u32()
    if version not in (2, 3):
        raise BadModelFile(f"unsupported GGUF version {version}")
    n_tensors, n_kv = r.u64(), r.u64()
    if n_tensors > MAX_COUNT or n_kv > MAX_COUNT:
        raise BadModelFile(f"GGUF header claims {n_tensors} tensors and {n_kv} metadata entries")
    metadata: dict[str, object] = {}
    for _ in range(n_kv):
        key = r.string()
        metadata[key] = r.value(r.u32())
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.u32()
        if n_dims > 8:
            raise BadModelFile(f"tensor {name!r} has {n_dims} dimensions")
        dims = [r.u64() for _ in range(n_dims)]
        kind, rel = r.u32(), r.u64()
        infos.append((name, dims, kind, rel))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise BadModelFile(f"bad GGUF alignment {alignment!r}")
    data_offset = -(-r._f.tell() // alignment) * alignment
    tensors = [
        TensorSpan(name, data_offset + rel, _tensor_bytes(name, dims, kind))
        for name, dims, kind, rel in infos
    ]
    for t in tensors:
        if t.offset + t.size > size:
            raise BadModelFile(f"tensor {t.name!r} runs past the end of the file")
    return GGUFLayout(version, metadata, data_offset, tuple(sorted(tensors, key=lambda t: t.offset)))


def _tensor_bytes(name: str, dims: list[int], kind: int) -> int:
    try:
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
    except (ValueError, KeyError):
        raise BadModelFile(f"tensor {name!r} has unknown type {kind}") from None
    elements = math.prod(dims)
    if elements % block:
        raise BadModelFile(f"tensor {name!r}: {elements} elements is not a whole number of blocks")
    return elements // block * type_size
