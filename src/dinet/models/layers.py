"""Which chunks of a model a pipeline stage needs, so that it pulls and keeps only those.

A stage of blocks [start, stop) reads (engine/torch/shard.py) the tensors `blk.N.*` of
its own blocks; the first stage also the embedding, `token_embd.weight`; the last stage
`output_norm.weight` and the head, `output.weight`, or the embedding when the head is
tied to it (as in SmolLM2). Every stage reads the header (metadata, tokenizer, tensor
table). A tensor outside the blocks that none of these names (`rope_freqs.weight`) is
small and shared: every stage takes it.

Chunks start at byte 0 and at every tensor (models/hashing.py), so each chunk belongs
to the header or to exactly one tensor, and a stage's bytes are whole chunks that it
checks against the model card like any others.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from dinet.errors import BadLayerSpan
from dinet.models._gguf import GGUFLayout
from dinet.models.card import chunk_offsets
from dinet.wire.chunks import ModelCard


@dataclass(frozen=True)
class LayerSpan:
    """Transformer blocks [start, stop) of a model."""

    start: int
    stop: int

    def __str__(self) -> str:
        return f"{self.start}:{self.stop}"

    @classmethod
    def parse(cls, text: str) -> LayerSpan:
        """`"0:15"` -> LayerSpan(0, 15); bounds are checked against a model at load."""
        start, sep, stop = text.partition(":")
        try:
            if not sep:
                raise ValueError(text)
            return cls(int(start), int(stop))
        except ValueError:
            raise BadLayerSpan(f"a layer span is START:STOP, e.g. 0:15, not {text!r}") from None

    def check(self, n_layers: int) -> None:
        if not 0 <= self.start < self.stop <= n_layers:
            raise BadLayerSpan(f"layers {self} do not fit a model of {n_layers} layers (0 <= start < stop)")


def check_span(card: ModelCard, start: int, stop: int) -> None:
    layers = card.gguf.layers
    if not 0 <= start < stop <= layers:
        raise BadLayerSpan(f"layers {start}:{stop} do not fit {card.model_id}, which has {layers} blocks")


def tensor_needed(name: str, start: int, stop: int, n_layers: int, *, tied: bool) -> bool:
    """Whether a stage of blocks [start, stop) of an `n_layers` model reads tensor `name`."""
    if name.startswith("blk."):
        block = name.split(".")[1]
        return not block.isdigit() or start <= int(block) < stop
    if name == "token_embd.weight":
        return start == 0 or (stop == n_layers and tied)
    if name.startswith("output"):
        return stop == n_layers
    return True


def header_chunks(card: ModelCard, layout: GGUFLayout) -> list[int]:
    """The chunks before the first tensor's bytes: metadata, tokenizer, tensor table."""
    first = layout.tensors[0].offset if layout.tensors else card.file_size
    return [i for i, offset in enumerate(chunk_offsets(card)) if offset < first]


def stage_chunks(card: ModelCard, layout: GGUFLayout, start: int, stop: int) -> list[int]:
    """Indices of the chunks a stage of blocks [start, stop) needs, in order."""
    check_span(card, start, stop)
    names = {t.name for t in layout.tensors}
    tied = "output.weight" not in names
    starts = [t.offset for t in layout.tensors]
    needed = header_chunks(card, layout)
    for index, offset in enumerate(chunk_offsets(card)):
        at = bisect.bisect_right(starts, offset) - 1  # the tensor this chunk is part of
        if at >= 0 and tensor_needed(layout.tensors[at].name, start, stop, card.gguf.layers, tied=tied):
            needed.append(index)
    return needed
