"""From token bytes to token frames: incremental UTF-8 and stop strings.

Each token's bytes go through one incremental UTF-8 decoder, so a character split
across tokens appears in the frame of the token that completes it (earlier frames
carry ""). Invalid bytes are dropped, as llama-cpp-python's `errors="ignore"` does.

Stop strings are never emitted. A frame whose text might be the start of a stop
string is held back until the next tokens decide it; frames are released in order,
each with its own text, so a client can resume after exactly the tokens it saw.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from dinet.wire.messages import TokenFrame


@dataclass(slots=True)
class _Pending:
    index: int
    token_id: int
    start: int  # offset of this token's text in the completion text
    end: int


class CompletionText:
    """Turns (index, token id, bytes) into TokenFrames, holding back possible stops."""

    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        self._stops = tuple(s for s in stops if s)
        self._longest_stop = max((len(s) for s in self._stops), default=0)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self._text = ""  # all completion text so far, prefix included
        self._released = 0  # text before this offset has been emitted (or was a prefix)
        self._pending: list[_Pending] = []

    @property
    def text(self) -> str:
        return self._text

    def prime(self, piece: bytes) -> None:
        """Account for a prefix token produced elsewhere: decoder state, no frame."""
        self._text += self._decoder.decode(piece)
        self._released = len(self._text)

    def push(self, index: int, token_id: int, piece: bytes) -> tuple[list[TokenFrame], bool]:
        """Add one generated token. Returns the frames now safe to emit, and whether a
        stop string has ended the completion (then no more tokens should be pushed)."""
        start = len(self._text)
        self._text += self._decoder.decode(piece)
        self._pending.append(_Pending(index, token_id, start, len(self._text)))
        if not self._stops:
            return self._release(len(self._text)), False
        stop_at = self._find_stop(start)
        if stop_at is not None:
            frames = self._release(stop_at, clip=True)
            self._pending.clear()
            return frames, True
        return self._release(len(self._text) - self._stop_prefix_len()), False

    def finish(self) -> list[TokenFrame]:
        """The frames still held back, at the end of the completion."""
        self._text += self._decoder.decode(b"", final=True)  # drops an incomplete tail
        if self._pending:
            self._pending[-1].end = len(self._text)
        return self._release(len(self._text))

    def _find_stop(self, new_from: int) -> int | None:
        """Offset of the earliest stop string that ends in the new text, if any."""
        search_from = max(0, new_from - self._longest_stop + 1)
        found = [self._text.find(s, search_from) for s in self._stops]
        hits = [p for p in found if p >= 0]
        return min(hits) if hits else None

    def _stop_prefix_len(self) -> int:
        """Length of the longest tail of the text that could begin a stop string."""
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._text)), best, -1):
                if self._text.endswith(stop[:size]):
                    best = size
                    break
        return best

    def _release(self, safe_end: int, clip: bool = False) -> list[TokenFrame]:
        """Emit pending frames, in order, whose text lies before `safe_end`.

        With clip, a frame straddling `safe_end` is cut there (a stop string begins),
        and frames starting at or after it are dropped by the caller.
        """
        frames: list[TokenFrame] = []
        taken = 0
        for pending in self._pending:
            if pending.end > safe_end and not (clip and pending.start < safe_end):
                break
            end = min(pending.end, safe_end)
            text = self._text[max(pending.start, self._released) : end]
            frames.append(TokenFrame(index=pending.index, token_id=pending.token_id, text=text))
            self._released = max(self._released, end)
            taken += 1
        del self._pending[:taken]
        return frames
