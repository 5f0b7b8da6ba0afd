"""Tiny GGUF files written with the `gguf` package, for chunking, diff and bad-input tests."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

SHAPES = {"token_embd.weight": (512, 1024), "blk.0.attn_norm.weight": (256,), "blk.0.ffn.weight": (768, 1024)}


def write_tiny(path: Path, *, seed: int = 0, extra_meta: str = "", change: str | None = None) -> Path:
    """A llama-like GGUF of ~5 MB in f32: several 1 MiB chunks and one tiny tensor.

    `change` names a tensor whose values differ; `extra_meta` grows the header.
    """
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(256)
    writer.add_file_type(0)
    writer.add_license("apache-2.0")
    if extra_meta:
        writer.add_string("general.description", extra_meta)
    for name, shape in SHAPES.items():
        data = rng.standard_normal(shape).astype(np.float32)
        if name == change:
            data = data + 1.0
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
