"""Helpers shared by the engine tests (not fixtures)."""

from __future__ import annotations

from contextlib import aclosing

from dinet.engine import WorkerEngine
from dinet.wire.messages import ChatMessage, EndFrame, ErrorFrame, GenerationParams, TokenFrame


def chat(content: str, **options: object) -> GenerationParams:
    return GenerationParams(messages=(ChatMessage(role="user", content=content),), **options)


class Run:
    """Everything one request streamed back."""

    def __init__(self, frames: list[TokenFrame], last: EndFrame | ErrorFrame) -> None:
        self.frames = frames
        self.last = last

    @property
    def tokens(self) -> list[int]:
        return [f.token_id for f in self.frames]

    @property
    def text(self) -> str:
        return "".join(f.text for f in self.frames)

    @property
    def end(self) -> EndFrame:
        assert isinstance(self.last, EndFrame), self.last
        return self.last


async def collect(engine: WorkerEngine, params: GenerationParams) -> Run:
    frames: list[TokenFrame] = []
    async with aclosing(engine.generate(params)) as replies:
        async for reply in replies:
            if isinstance(reply, TokenFrame):
                frames.append(reply)
            else:
                return Run(frames, reply)
    raise AssertionError("the stream ended without an EndFrame or ErrorFrame")
