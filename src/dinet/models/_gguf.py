"""A small, strict reader of a GGUF file's header: metadata and tensor layout.

`gguf.GGUFReader` parses every array (the tokenizer's 49k strings) into numpy
objects and takes seconds; chunking needs only where each tensor's bytes start,
so this reads the header once, skipping arrays, and checks every length against
the file size so that garbage cannot make it allocate or loop for long.

It is also the gate in front of llama.cpp (import, `din node --model`, every worker
start): a file is refused with BadModelFile unless its header is one llama.cpp
would accept without tripping an assertion. The checks mirror llama.cpp's own
`gguf_init_from_file`: counts and lengths within the file, known value and tensor
types, no nested arrays, unique keys and tensor names, at most 4 dimensions with
a whole number of blocks per row, `general.alignment` a power-of-two u32, and
tensor data laid out back to back (each at the aligned end of the one before,
as llama.cpp requires) and ending inside the file.
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
MAX_KEY_BYTES = 65_536
MAX_STRING_BYTES = 16 << 20  # a metadata string (chat templates are a few kB)
MAX_NAME_BYTES = 63  # llama.cpp's GGML_MAX_NAME, less its terminating NUL
MAX_DIMS = 4  # GGML_MAX_DIMS
_INT64_MAX = (1 << 63) - 1
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
_U32 = 4


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

    def tell(self) -> int:
        return self._f.tell()

    def remaining(self) -> int:
        return self._size - self._f.tell()

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

    def string(self, limit: int = MAX_STRING_BYTES, what: str = "string") -> str:
        n = self.u64()
        if n > self.remaining():
            raise BadModelFile(f"GGUF {what} of {n} bytes runs past the end of the file")
        if n > limit:
            raise BadModelFile(f"GGUF {what} of {n} bytes is longer than {limit}")
        return self.take(n).decode("utf-8", errors="replace")

    def skip(self, n: int) -> None:
        if n > self.remaining():
            raise BadModelFile("GGUF array runs past the end of the file")
        self._f.seek(n, 1)

    def value(self, kind: int) -> object:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.u32(), self.u64()
            # Each item takes at least its own size (a string at least its 8-byte length):
            # a count the rest of the file cannot hold is refused before any loop.
            least = struct.calcsize(_SCALARS[item]) if item in _SCALARS else 8
            if item not in _SCALARS and item != _STRING:
                raise BadModelFile(f"GGUF array of unsupported item type {item}")
            if count * least > self.remaining():
                raise BadModelFile(f"GGUF array claims {count} items, more than the file holds")
            if item in _SCALARS:
                self.skip(count * least)
            else:
                for _ in range(count):  # strings: lengths checked, bytes skipped, nothing kept
                    n = self.u64()
                    if n > MAX_STRING_BYTES:
                        raise BadModelFile(f"GGUF string of {n} bytes in an array")
                    self.skip(n)
            return count
        raise BadModelFile(f"unknown GGUF value type {kind}")


class _HeaderBeyond(Exception):
    """The header goes on past the bytes that are there yet."""


class _PrefixReader(_Reader):
    """A reader of a file whose first `have` bytes alone are real (a pull under way)."""

    def __init__(self, f: BinaryIO, size: int, have: int) -> None:
        super().__init__(f, size)
        self._have = have

    def _within(self, n: int) -> None:
        if self.tell() + n > self._have:
            raise _HeaderBeyond

    def take(self, n: int) -> bytes:
        self._within(n)
        return super().take(n)

    def skip(self, n: int) -> None:
        self._within(n)
        super().skip(n)


def read_layout(path: Path) -> GGUFLayout:
    """The header of the GGUF file at `path`, or BadModelFile saying what is wrong."""
    layout = _read(path, None)
    assert layout is not None  # only a prefix can end too soon
    return layout


def read_partial_layout(path: Path, have: int) -> GGUFLayout | None:
    """The header of a file being pulled, whose first `have` bytes alone are there yet
    (the rest are holes): None if the header goes on past them."""
    return _read(path, have)


def _read(path: Path, have: int | None) -> GGUFLayout | None:
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            return _parse(_Reader(f, size) if have is None else _PrefixReader(f, size, have), size)
    except _HeaderBeyond:
        return None
    except OSError as exc:
        raise BadModelFile(f"cannot read {path}: {exc.strerror}") from None
    except BadModelFile as exc:
        raise BadModelFile(f"{path} is not a usable GGUF model: {exc}") from None


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
        key = r.string(MAX_KEY_BYTES, "key")
        if key in metadata:
            raise BadModelFile(f"GGUF metadata key {key!r} appears twice")
        kind = r.u32()
        if key == "general.alignment" and kind != _U32:
            raise BadModelFile(f"general.alignment has value type {kind}, not u32")
        metadata[key] = r.value(kind)
    infos = [_tensor_info(r) for _ in range(n_tensors)]
    names = [name for name, *_ in infos]
    if len(set(names)) != len(names):
        raise BadModelFile("GGUF file names a tensor twice")
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise BadModelFile(f"bad GGUF alignment {alignment!r}")
    data_offset = -(-r.tell() // alignment) * alignment
    tensors, expected = [], 0
    for name, dims, kind, rel in infos:
        nbytes = _tensor_bytes(name, dims, kind)
        if rel != expected:  # llama.cpp requires tensors back to back, in header order
            raise BadModelFile(f"tensor {name!r} starts at data offset {rel}, expected {expected}")
        span = TensorSpan(name, data_offset + rel, nbytes)
        if span.offset + span.size > size:
            raise BadModelFile(f"tensor {name!r} runs past the end of the file")
        tensors.append(span)
        expected += -(-nbytes // alignment) * alignment
    return GGUFLayout(version, metadata, data_offset, tuple(sorted(tensors, key=lambda t: t.offset)))


def _tensor_info(r: _Reader) -> tuple[str, list[int], int, int]:
    name = r.string(MAX_NAME_BYTES, "tensor name")
    n_dims = r.u32()
    if not 1 <= n_dims <= MAX_DIMS:
        raise BadModelFile(f"tensor {name!r} has {n_dims} dimensions")
    dims = [r.u64() for _ in range(n_dims)]
    if any(d > _INT64_MAX for d in dims):
        raise BadModelFile(f"tensor {name!r} has a dimension beyond int64")
    kind, rel = r.u32(), r.u64()
    return name, dims, kind, rel


def _tensor_bytes(name: str, dims: list[int], kind: int) -> int:
    try:
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
    except (ValueError, KeyError):
        raise BadModelFile(f"tensor {name!r} has unknown type {kind}") from None
    if dims[0] % block:
        raise BadModelFile(f"tensor {name!r}: a row of {dims[0]} is not a whole number of {block}-blocks")
    elements = math.prod(dims)  # a Python int: no overflow, and checked against the file size next
    if elements > _INT64_MAX:
        raise BadModelFile(f"tensor {name!r} claims {elements} elements")
    return elements // block * type_size
