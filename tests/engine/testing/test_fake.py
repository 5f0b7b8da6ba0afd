"""The FAKE engine of benchmarks: deterministic echoes that resume like a real engine,
and a setting that cannot be mistaken for, or combined with, a real model."""

from __future__ import annotations

import pytest

from dinet._config_layers import resolve
from dinet.config import NodeSettings
from dinet.engine.testing.fake import FAKE_MODEL_HASH, FAKE_MODEL_ID, FakeEngine
from dinet.errors import ConfigError
from dinet.wire.messages import ChatMessage, EndFrame, GenerationParams, TokenFrame


async def _frames(params: GenerationParams) -> list[TokenFrame | EndFrame]:
    frames = [frame async for frame in FakeEngine().generate(params)]
    assert all(isinstance(f, TokenFrame | EndFrame) for f in frames)
    return frames  # type: ignore[return-value]


async def test_it_echoes_the_last_message_then_ends_with_its_length():
    params = GenerationParams(
        messages=(ChatMessage(role="system", content="ignored"), ChatMessage(role="user", content="a b c")),
        max_tokens=5,
    )
    *tokens, end = await _frames(params)
    assert "".join(t.text for t in tokens) == "a b c a b "
    assert [t.index for t in tokens] == [0, 1, 2, 3, 4]
    assert isinstance(end, EndFrame) and end.usage.completion_tokens == 5 and end.finish_reason == "length"


async def test_a_resumed_answer_continues_where_the_first_one_stopped():
    whole = await _frames(GenerationParams(prompt="one two three", max_tokens=6))
    first_part = [f for f in whole if isinstance(f, TokenFrame)][:2]
    prefix = tuple(t.token_id for t in first_part)
    resumed = await _frames(GenerationParams(prompt="one two three", max_tokens=6, prefix_tokens=prefix))
    assert first_part + resumed[:-1] == whole[:-1]  # the same tokens, the same indices


def test_it_is_named_fake_and_refuses_to_be_combined_with_a_model(tmp_path):
    assert "fake" in FAKE_MODEL_ID and len(FAKE_MODEL_HASH) == 64
    for flags in ({"no_model": True}, {"model": "x.gguf"}, {"layers": "0:4"}):
        with pytest.raises(ConfigError, match="--fake-engine contradicts"):
            resolve(NodeSettings, flags={"home": str(tmp_path), "fake_engine": True, **flags})
