"""A contiguous range of a model's transformer blocks, run in PyTorch on the CPU.

This is the engine of pipeline sharding: a stage loads only the tensors of its
layers from the GGUF (the file is memory-mapped), keeps a KV cache per session,
and passes float32 hidden states to the next stage:

    first stage   token ids (T,) int64      -> hidden (T, n_embd) float32
    middle stage  hidden (T, n_embd)        -> hidden (T, n_embd)
    last stage    hidden (T, n_embd)        -> logits of the last position (n_vocab,) float32

A stage that is both first and last is the whole model. Splitting a model into
stages changes nothing, bit for bit: each block sees exactly the float32 numbers it
would see in the whole model.

With `int4=True` (the default) Q4_1 and Q8_0 weights stay 4-bit in memory
(`dinet.engine.torch._gguf_weights`); other types, or `int4=False`, run in float32.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from dinet.engine.torch._block import ModelShape, load_block, rotary_table, run_blocks
from dinet.engine.torch._gguf_file import GGUFFile
from dinet.engine.torch._gguf_tokenizer import GGUFTokenizer
from dinet.engine.torch._gguf_weights import GGUFWeights, OutputHead
from dinet.errors import BadShardInput
from dinet.models.layers import LayerSpan

__all__ = ["GGUFTokenizer", "LayerSpan", "ShardModel", "ShardSession"]

logger = logging.getLogger(__name__)

DEFAULT_N_CTX = 2048
_FIRST_CAPACITY = 64  # KV cache positions allocated up front; doubled when full


class ShardModel:
    """The weights of one layer span; shared by all of its sessions (read-only)."""

    def __init__(
        self,
        shape: ModelShape,
        span: LayerSpan,
        weights: GGUFWeights,
        *,
        n_vocab: int,
        n_ctx: int,
        int4: bool,
    ) -> None:
        self.shape = shape
        self.span = span
        self.n_layers = shape.n_layers
        self.n_embd = shape.n_embd
        self.n_vocab = n_vocab
        self.n_ctx = n_ctx
        self.is_first = span.start == 0
        self.is_last = span.stop == shape.n_layers
        self._weights = weights  # the first stage embeds from it, row by row
        self.blocks = [load_block(weights, i, int4=int4) for i in range(span.start, span.stop)]
        self.rotary = rotary_table(shape, n_ctx)  # (n_ctx, head_dim/2) complex64
        self.output_norm: torch.Tensor | None = None
        self.output: OutputHead | None = None
        if self.is_last:
            self.output_norm = weights.vector("output_norm.weight")
            tied = not weights.has("output.weight")  # tied to the embedding, as in SmolLM2
            self.output = OutputHead(weights, "token_embd.weight" if tied else "output.weight", int4=int4)

    @classmethod
    def load(
        cls,
        path: Path,
        span: LayerSpan,
        *,
        threads: int = 1,
        int4: bool = True,
        n_ctx: int = DEFAULT_N_CTX,
    ) -> ShardModel:
        """Read the tensors of `span` (and the embedding or output head if first or last).

        `threads` sets torch's intra-op threads for this whole process.
        """
        torch.set_num_threads(max(1, threads))
        file = GGUFFile(path)
        shape = ModelShape.read(file.metadata)
        span.check(shape.n_layers)
        weights = GGUFWeights(file)
        n_vocab = weights.rows_count("token_embd.weight")
        with torch.inference_mode():
            model = cls(shape, span, weights, n_vocab=n_vocab, n_ctx=min(n_ctx, shape.n_ctx_train), int4=int4)
        logger.info("loaded layers %s of %s (int4=%s, threads=%d)", span, path, int4, threads)
        return model

    def new_session(self) -> ShardSession:
        return ShardSession(self)

    def logits_of(self, row: torch.Tensor) -> torch.Tensor:
        """(1, n_embd) normalized last hidden state -> (n_vocab,) float32 (last stage only)."""
        assert self.output is not None, "only the last stage has the output head"
        with torch.inference_mode():
            return self.output(row)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(T,) int64 -> (T, n_embd) float32: rows of the embedding, dequantized."""
        return self._weights.rows("token_embd.weight", tokens.numpy())


class ShardSession:
    """One sequence going through one stage: its KV cache and position."""

    def __init__(self, model: ShardModel) -> None:
        self.model = model
        self.length = 0  # positions already in the cache
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def rewind(self, length: int) -> None:
        """Keep only the first `length` positions: later ones are written over."""
        if not 0 <= length <= self.length:
            raise BadShardInput(f"cannot keep {length} of {self.length} positions")
        self.length = length

    def nbytes(self) -> int:
        """Memory held by this session's KV cache."""
        return sum(t.nbytes for t in (self._k, self._v) if t is not None)

    def forward(self, inputs: torch.Tensor, *, speculative: bool = False) -> torch.Tensor:
        """Run T new positions through this stage and append them to the cache.

        First stage: token ids (T,) int64; else hidden states (T, n_embd) float32.
        Returns hidden states (T, n_embd) float32, or on the last stage the logits
        of the last position, (n_vocab,) float32. A `speculative` step's rows come out
        bit for bit as T one-row steps would give them, and the last stage returns them
        normalized, (T, n_embd), for `ShardModel.logits_of` one row at a time: a guess is
        checked against plain decoding's choice, and the rows after a refused guess cost
        no output head.
        """
        m = self.model
        t = self._check(inputs)
        with torch.inference_mode():
            x = m.embed(inputs) if m.is_first else inputs.contiguous()  # (T, n_embd)
            self._reserve(self.length + t)
            assert self._k is not None and self._v is not None
            start = self.length
            rotary = m.rotary[start : start + t]  # (T, head_dim/2)
            mask = None  # one new position may attend to all; several, each to those before it
            if t > 1 and not speculative:
                mask = torch.ones(t, start + t, dtype=torch.bool).tril(diagonal=start)
            heads, kv_heads, eps = m.shape.n_head, m.shape.n_head_kv, m.shape.rms_eps
            x = run_blocks(x, m.blocks, rotary, self._k, self._v, start, mask, heads, kv_heads, eps)
            self.length += t
            if not m.is_last:
                return x
            assert m.output_norm is not None and m.output is not None
            if speculative:
                return F.rms_norm(x, (m.n_embd,), m.output_norm, m.shape.rms_eps)  # (T, n_embd)
            last = F.rms_norm(x[-1:], (m.n_embd,), m.output_norm, m.shape.rms_eps)  # (1, n_embd)
            return m.output(last)  # (n_vocab,)

    def _check(self, inputs: torch.Tensor) -> int:
        m = self.model
        if not isinstance(inputs, torch.Tensor):
            raise BadShardInput(f"a stage takes a torch.Tensor, not {type(inputs).__name__}")
        if m.is_first:
            if inputs.dtype != torch.int64 or inputs.dim() != 1:
                raise BadShardInput(f"the first stage takes (T,) int64 token ids, not {_describe(inputs)}")
            if inputs.numel() and not bool(((inputs >= 0) & (inputs < m.n_vocab)).all()):
                raise BadShardInput(f"a token id is outside the vocabulary of {m.n_vocab}")
        elif inputs.dtype != torch.float32 or inputs.dim() != 2 or inputs.shape[1] != m.n_embd:
            expected = f"(T, {m.n_embd}) float32 hidden states"
            raise BadShardInput(f"this stage takes {expected}, not {_describe(inputs)}")
        t = inputs.shape[0]
        if t == 0:
            raise BadShardInput("no positions to run")
        if self.length + t > m.n_ctx:
            raise BadShardInput(f"{self.length} + {t} positions exceed the context of {m.n_ctx}")
        return t

    def _reserve(self, needed: int) -> None:
        """Make the caches hold `needed` positions, growing them by doubling."""
        capacity = 0 if self._k is None else self._k.shape[2]
        if needed <= capacity:
            return
        m = self.model
        grown = min(m.n_ctx, max(needed, _FIRST_CAPACITY, 2 * capacity))
        size = (len(m.blocks), m.shape.n_head_kv, grown, m.shape.head_dim)
        k, v = torch.zeros(size), torch.zeros(size)  # (layers, Hkv, capacity, head_dim)
        if self._k is not None and self._v is not None:
            k[:, :, :capacity] = self._k
            v[:, :, :capacity] = self._v
        self._k, self._v = k, v


def _describe(tensor: torch.Tensor) -> str:
    return f"{tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"
