"""4-bit matrices hold the GGUF's weights: each column equals the dequantized file's."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest
import torch

from dinet.engine.torch._gguf_file import GGUFFile
from dinet.engine.torch._gguf_weights import GGUFWeights, matmul


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("blk.3.ffn_down.weight", gguf.GGMLQuantizationType.Q4_1),
        ("token_embd.weight", gguf.GGMLQuantizationType.Q8_0),
    ],
)
def test_int4_columns_equal_the_dequantized_file(model_path: Path, name: str, kind: object) -> None:
    file = GGUFFile(model_path)
    assert file.tensors[name].kind == kind
    weights = GGUFWeights(file)
    matrix = weights.matrix([name], int4=True)
    assert matrix.scales_zeros is not None  # kept 4-bit
    dense = weights.dense(name)  # (N, K) float32, as gguf dequantizes it
    k = dense.shape[1]
    columns = [0, 1, 15, 16, 17, 31, 32, k - 1]  # both nibbles of a block, and block edges
    one_hot = torch.zeros(len(columns), k)
    one_hot[range(len(columns)), columns] = 1.0
    got = matmul(one_hot, matrix).float()  # (C, N): column c of the weight, through the kernel
    expected = dense[:, columns].T
    # Only the bf16 rounding of scales, zeros and output separates them: well under
    # 1% of the largest weight (a swapped nibble or a wrong zero is off by whole steps).
    assert (got - expected).abs().max() <= 2**-7 * expected.abs().max()
    assert not torch.equal(expected, torch.zeros_like(expected))


def test_embedding_rows_equal_the_dequantized_file(model_path: Path) -> None:
    weights = GGUFWeights(GGUFFile(model_path))
    ids = torch.tensor([0, 2, 1234, 49151])
    rows = weights.rows("token_embd.weight", ids.numpy())
    assert torch.equal(rows, weights.dense("token_embd.weight")[ids])
