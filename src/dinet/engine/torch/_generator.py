"""Generation over layer-range stages held in one process: "our engine, whole".

The same loop as the llama.cpp worker (`dinet.engine._generate.run_generation`):
same sampler, same `CompletionText`, same resume semantics (the prompt through the
stages in one forward, then every prefix token and every new token one step each).
Used by tests and benchmarks, and as the reference a chain of stage processes must
reproduce bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np
import numpy.typing as npt
import torch

from dinet.engine._generate import BadRequest, Emit, ShouldStop, run_generation
from dinet.engine.sampler import Sampler
from dinet.engine.torch._gguf_tokenizer import GGUFTokenizer
from dinet.engine.torch.shard import LayerSpan, ShardModel, ShardSession
from dinet.errors import BadLayerSpan
from dinet.wire.messages import GenerationParams


def check_chain(models: Sequence[ShardModel]) -> None:
    """The stages must cover all layers of one model, in order, without gaps."""
    if not models or not models[0].is_first or not models[-1].is_last:
        raise BadLayerSpan("a chain must start at layer 0 and end at the model's last layer")
    for before, after in zip(models, models[1:], strict=False):
        if before.span.stop != after.span.start:
            raise BadLayerSpan(f"layers {before.span} and {after.span} do not join")


class TorchGenerator:
    """Runs requests, one at a time, through a chain of stages in this process."""

    def __init__(self, models: Sequence[ShardModel], tokenizer: GGUFTokenizer, model_id: str) -> None:
        check_chain(models)
        self._models = list(models)
        self._tokenizer = tokenizer
        self._model_id = model_id
        self.n_vocab = models[-1].n_vocab
        self.n_ctx = min(m.n_ctx for m in models)
        self._sampler = Sampler(self.n_vocab)
        self._sessions: list[ShardSession] = []
        self._logits: npt.NDArray[np.float32] = np.zeros(self.n_vocab, dtype=np.float32)

    @classmethod
    def load(
        cls, path: Path, spans: Sequence[LayerSpan], *, threads: int = 1, int4: bool = True
    ) -> TorchGenerator:
        """Stages for `spans` (e.g. one span of all layers: the whole model) and the tokenizer."""
        models = [ShardModel.load(path, span, threads=threads, int4=int4) for span in spans]
        return cls(models, GGUFTokenizer.from_gguf(path), Path(path).name.removesuffix(".gguf").lower())

    def run(
        self,
        params: GenerationParams,
        received_at: float,
        emit: Emit,
        should_stop: ShouldStop = lambda: False,
    ) -> None:
        """Generate for one request (see `run_generation`)."""
        run_generation(self, self._sampler, self._model_id, params, received_at, emit, should_stop)

    def prompt_tokens(self, params: GenerationParams) -> tuple[list[int], tuple[str, ...]]:
        if params.messages is not None:
            if not self._tokenizer.has_chat_template:
                raise BadRequest("this model has no chat template: send a raw prompt")
            if params.uses_tools:
                raise BadRequest("the layer-range engine does not render tools yet")
            return self._tokenizer.chat_prompt(params.messages)
        return self._tokenizer.raw_prompt(params.prompt or ""), ()

    def start(self, prompt: list[int]) -> None:
        self._sessions = [m.new_session() for m in self._models]
        self._forward(prompt)

    def step(self, token: int) -> None:
        self._forward([token])

    def n_tokens(self) -> int:
        return self._sessions[0].length if self._sessions else 0

    def last_logits(self) -> npt.NDArray[np.float32]:
        return self._logits

    def piece(self, token: int) -> bytes:
        return self._tokenizer.piece(token)

    def is_eog(self, token: int) -> bool:
        return self._tokenizer.is_eog(token)

    def constraint(self, grammar: str) -> NoReturn:
        raise BadRequest("the layer-range engine does not keep to a grammar yet")

    def _forward(self, tokens: list[int]) -> None:
        """Tokens through every stage in turn; keeps the last position's logits."""
        x = torch.tensor(tokens, dtype=torch.int64)
        for session in self._sessions:
            x = session.forward(x)
        self._logits = x.numpy()  # (n_vocab,) float32
