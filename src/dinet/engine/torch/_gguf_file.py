"""A GGUF file opened for the torch engine: metadata, tensor table, mapped bytes.

`gguf.GGUFReader` turns each of the tokenizer's ~100k strings into numpy objects and
takes several seconds per open; a stage opens the file once per load, so this reads
the header with plain `struct` (about 0.1 s) and maps the tensor data with numpy.
Every length is checked against the file size: a garbage file gives BadModelFile,
never a huge allocation.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt

from dinet.errors import BadModelFile, ModelNotFound

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
_MAX_COUNT = 10_000_000
_MAX_HEADER = 1 << 26  # metadata and tensor table; real ones are a few MB


@dataclass(frozen=True)
class TensorInfo:
    name: str
    kind: gguf.GGMLQuantizationType
    rows: int  # product of all dimensions but the first
    row_bytes: int  # one row of ne[0] elements, stored
    offset: int  # absolute, in the file


class _Cursor:
    def __init__(self, buffer: bytes) -> None:
        self._buf = buffer
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self._buf):
            raise BadModelFile("the GGUF header runs past the end of the file")
        out = self._buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self) -> int:
        n = int(self.scalar("<Q"))
        if n > _MAX_COUNT:
            raise BadModelFile(f"the GGUF header claims {n} items")
        return n

    def string(self) -> str:
        return self.take(self.count()).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, n = int(self.scalar("<I")), self.count()
            if item in _SCALARS:
                fmt = _SCALARS[item]
                return list(struct.unpack(f"<{n}{fmt[1]}", self.take(n * struct.calcsize(fmt))))
            return [self.value(item) for _ in range(n)]
        raise BadModelFile(f"unknown GGUF value type {kind}")


class GGUFFile:
    """Metadata (arrays as lists) and the tensor table; tensor bytes are read lazily."""

    def __init__(self, path: Path) -> None:
        if not Path(path).is_file():
            raise ModelNotFound(f"no model file at {path}")
        self.path = Path(path)
        try:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
            self.metadata, self.tensors = self._parse()
        except (ValueError, KeyError, OSError, struct.error) as exc:
            raise BadModelFile(f"{path} is not a readable GGUF file: {exc}") from None

    def _parse(self) -> tuple[dict[str, Any], dict[str, TensorInfo]]:
        size = len(self._map)
        cur = _Cursor(bytes(self._map[: min(size, _MAX_HEADER)]))
        if cur.take(4) != b"GGUF" or cur.scalar("<I") not in (2, 3):
            raise BadModelFile(f"{self.path} is not a GGUF file of version 2 or 3")
        n_tensors, n_kv = cur.count(), cur.count()
        metadata = {}
        for _ in range(n_kv):
            key = cur.string()
            metadata[key] = cur.value(int(cur.scalar("<I")))
        table = []
        for _ in range(n_tensors):
            name = cur.string()
            dims = [int(cur.scalar("<Q")) for _ in range(int(cur.scalar("<I")))]
            table.append((name, dims, int(cur.scalar("<I")), int(cur.scalar("<Q"))))
        alignment = int(metadata.get("general.alignment", 32))
        start = -(-cur.pos // alignment) * alignment
        tensors = {}
        for name, dims, kind_id, rel in table:
            kind = gguf.GGMLQuantizationType(kind_id)
            block, type_size = gguf.GGML_QUANT_SIZES[kind]
            if not dims or dims[0] % block:
                raise BadModelFile(f"tensor {name!r} is not made of whole blocks")
            rows = int(np.prod(dims[1:], dtype=np.int64)) if len(dims) > 1 else 1
            info = TensorInfo(name, kind, rows, dims[0] // block * type_size, start + rel)
            if info.offset + info.rows * info.row_bytes > size:
                raise BadModelFile(f"tensor {name!r} runs past the end of the file")
            tensors[name] = info
        return metadata, tensors

    def data(self, name: str) -> npt.NDArray[np.uint8]:
        """The stored bytes of a tensor, one row per output row: a view of the map."""
        t = self.tensors[name]
        return self._map[t.offset : t.offset + t.rows * t.row_bytes].reshape(t.rows, t.row_bytes)
