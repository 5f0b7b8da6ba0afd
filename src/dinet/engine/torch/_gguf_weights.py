"""Weights of a llama-family GGUF, read one tensor at a time, as torch matrices.

The file is memory-mapped (`dinet.engine.torch._gguf_file`): a stage touches only the pages
of its own tensors.

A `Matrix` computes `y = x @ W.T`, `x` (T, K) -> `y` (T, N), with `matmul`, in one of
two forms (callers add the result to the float32 residual, which promotes a bf16 `y`
back without a separate cast):

- 4-bit: the weights stay packed nibbles and run through
  `torch._weight_int4pack_mm_for_cpu` (bf16 activations and output, groups of 32
  along K). That kernel dequantizes as `(q - 8) * scale + zero`, so a Q4_1 block
  (`d * q + m`, q in 0..15) maps over with scale = d and zero = m + 8d. A Q8_0 block
  (`d * q`, q in -128..127) is split into nibbles, q = 16 * hi + lo with hi in -8..7
  and lo in 0..15, and becomes two 4-bit halves side by side along K: [hi | lo] with
  scales (16d, d) and zeros (0, 8d), applied to [x | x]. Only the rounding of d to
  bf16 differs from the file.
- float32, from `gguf.quants.dequantize`, for every other type (and for all weights
  when int4 is off).

`Matrix` is a NamedTuple and `matmul` TorchScript, so a whole stage's blocks run in
one scripted call (`dinet.engine.torch._block`). No `from __future__ import
annotations` here: TorchScript cannot read the NamedTuple's fields as strings.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import gguf
import numpy as np
import numpy.typing as npt
import torch

from dinet.engine.torch._gguf_file import GGUFFile, TensorInfo
from dinet.errors import UnsupportedModel

logger = logging.getLogger(__name__)

GROUP = 32  # Q4_1 and Q8_0 blocks hold 32 weights: one int4 group each
_Q4_1_BYTES = 20  # f16 d, f16 m, 16 bytes of nibbles
_Q8_0_BYTES = 34  # f16 d, 32 int8
_PACK_ROWS = 4096


class Matrix(NamedTuple):
    """A (N, K) weight, 4-bit or float32; see the module's docstring."""

    weight: torch.Tensor  # 4-bit: packed nibbles in torch's layout; float32: (N, K)
    scales_zeros: torch.Tensor | None  # 4-bit: (K*repeat/GROUP, N, 2) bf16; float32: None
    repeat: int  # 2 for a split Q8_0: the input is fed twice, [x | x]
    out_features: int  # N


@torch.jit.script
def matmul(x: torch.Tensor, m: Matrix) -> torch.Tensor:
    """x (T, K) -> (T, N): bf16 for a 4-bit matrix, float32 for a float32 one."""
    scales_zeros = m.scales_zeros
    if scales_zeros is None:
        return torch.nn.functional.linear(x.float(), m.weight)
    x16 = x.to(torch.bfloat16)  # no copy if it already is
    if m.repeat > 1:
        x16 = x16.repeat(1, m.repeat)
    group = 32  # GROUP: TorchScript reads no globals
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x16, m.weight, group, scales_zeros)


def int4_matrix(values: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, repeat: int) -> Matrix:
    """values (N, K*repeat) uint8 in 0..15; scales, zeros (N, K*repeat/GROUP) float32."""
    # The packer wants int32: convert a slice of rows at a time (packing is row by row).
    packed = torch.cat(
        [
            torch._convert_weight_to_int4pack_for_cpu(values[i : i + _PACK_ROWS].to(torch.int32), 1)
            for i in range(0, values.shape[0], _PACK_ROWS)
        ]
    )
    pairs = torch.stack([scales.T, zeros.T], dim=-1)  # (K/GROUP, N, 2)
    return Matrix(packed, pairs.to(torch.bfloat16).contiguous(), repeat, values.shape[0])


def dense_matrix(weight: torch.Tensor) -> Matrix:
    """weight (N, K) float32."""
    return Matrix(weight.contiguous(), None, 1, weight.shape[0])


@dataclass(frozen=True)
class _Nibbles:
    values: npt.NDArray[np.uint8]  # (N, K') in 0..15
    scales: npt.NDArray[np.float32]  # (N, K'/GROUP)
    zeros: npt.NDArray[np.float32]
    repeat: int


def _f16(blocks: npt.NDArray[np.uint8], start: int) -> npt.NDArray[np.float32]:
    """The f16 at byte `start` of every block, as float32: (N, blocks)."""
    return np.ascontiguousarray(blocks[:, :, start : start + 2]).view(np.float16)[..., 0].astype(np.float32)


def _q4_1_nibbles(raw: npt.NDArray[np.uint8]) -> _Nibbles:
    blocks = raw.reshape(raw.shape[0], -1, _Q4_1_BYTES)  # (N, K/32, 20)
    d, m = _f16(blocks, 0), _f16(blocks, 2)
    packed = blocks[:, :, 4:]  # low nibbles are weights 0..15 of the block, high ones 16..31
    values = np.concatenate([packed & 15, packed >> 4], axis=-1).reshape(raw.shape[0], -1)
    return _Nibbles(values, d, m + 8 * d, 1)


def _q8_0_nibbles(raw: npt.NDArray[np.uint8]) -> _Nibbles:
    blocks = raw.reshape(raw.shape[0], -1, _Q8_0_BYTES)  # (N, K/32, 34)
    d = _f16(blocks, 0)
    q = blocks[:, :, 2:]  # (N, K/32, 32) the int8 weights, as their bytes
    n = raw.shape[0]
    hi = ((q.view(np.int8) >> 4) + 8).view(np.uint8)  # arithmetic shift: -8..7, stored as 0..15
    lo = q & 15
    values = np.concatenate([hi.reshape(n, -1), lo.reshape(n, -1)], axis=1)
    scales = np.concatenate([16 * d, d], axis=1)
    zeros = np.concatenate([np.zeros_like(d), 8 * d], axis=1)
    return _Nibbles(values, scales, zeros, 2)


_NIBBLES = {
    gguf.GGMLQuantizationType.Q4_1: _q4_1_nibbles,
    gguf.GGMLQuantizationType.Q8_0: _q8_0_nibbles,
}


class GGUFWeights:
    """Tensors of one GGUF by name; nothing is read until asked for."""

    def __init__(self, file: GGUFFile) -> None:
        self._file = file

    def has(self, name: str) -> bool:
        return name in self._file.tensors

    def rows_count(self, name: str) -> int:
        return self._get(name).rows

    def vector(self, name: str) -> torch.Tensor:
        """A norm weight: (n,) float32."""
        return torch.from_numpy(self._dequantize(name).reshape(-1).copy())

    def dense(self, name: str) -> torch.Tensor:
        """(N, K) float32, whatever the stored type."""
        return torch.from_numpy(np.ascontiguousarray(self._dequantize(name)))

    def rows(self, name: str, ids: npt.NDArray[np.int64]) -> torch.Tensor:
        """Rows `ids` of a matrix, dequantized: (len(ids), K) float32 (embedding lookups)."""
        kind = self._get(name).kind
        raw = self._file.data(name)[ids]  # (len(ids), row_bytes)
        return torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(raw, kind), dtype=np.float32))

    def matrix(self, names: Sequence[str], *, int4: bool) -> Matrix:
        """The named (N_i, K) matrices stacked along N: one matmul computes them all."""
        kinds = [self._get(name).kind for name in names]
        if int4 and all(kind in _NIBBLES for kind in kinds):
            parts = [_NIBBLES[kind](self._file.data(name)) for kind, name in zip(kinds, names, strict=True)]
            if len({p.repeat for p in parts}) == 1:
                try:
                    return int4_matrix(
                        torch.from_numpy(np.concatenate([p.values for p in parts])),
                        torch.from_numpy(np.concatenate([p.scales for p in parts])),
                        torch.from_numpy(np.concatenate([p.zeros for p in parts])),
                        parts[0].repeat,
                    )
                except RuntimeError as exc:  # a shape the packing kernel refuses: run it in float32
                    logger.warning("%s stays float32: %s", ", ".join(names), exc)
        return dense_matrix(torch.cat([self.dense(name) for name in names]))

    def _get(self, name: str) -> TensorInfo:
        tensor = self._file.tensors.get(name)
        if tensor is None:
            raise UnsupportedModel(f"the GGUF has no tensor {name}")
        return tensor

    def _dequantize(self, name: str) -> npt.NDArray[np.float32]:
        kind = self._get(name).kind
        try:
            out = gguf.quants.dequantize(self._file.data(name), kind)
        except NotImplementedError as exc:
            raise UnsupportedModel(f"{name}: cannot read type {kind.name}: {exc}") from None
        return out.astype(np.float32, copy=False)


class OutputHead:
    """The output projection, hidden (1, n_embd) -> logits (n_vocab,) float32.

    A 4-bit head computes every logit with bf16 inputs and outputs (rounding of about
    0.2 at most, measured); on its own that would round near-ties between the best
    tokens differently from float32. So the logits within `REFINE_MARGIN` of the best
    are recomputed exactly, in float32 from the stored rows: the best token is the
    float32 one, at the cost of a few rows instead of the whole (n_vocab, n_embd).
    """

    REFINE_MARGIN = 1.0  # 5x the largest rounding measured

    def __init__(self, weights: GGUFWeights, name: str, *, int4: bool) -> None:
        self._weights = weights
        self._name = name
        self._matrix = weights.matrix([name], int4=int4)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits = matmul(x, self._matrix)[0].float()  # (n_vocab,)
        if self._matrix.scales_zeros is not None:  # 4-bit
            near = torch.nonzero(logits >= logits.max() - self.REFINE_MARGIN)[:, 0]  # (C,)
            rows = self._weights.rows(self._name, near.numpy())  # (C, n_embd) float32, exact
            logits.index_copy_(0, near, rows @ x[0])
        return logits
