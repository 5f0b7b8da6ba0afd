"""Incremental detokenization and stop strings, on hand-made token bytes."""

from __future__ import annotations

from dinet.engine._text import CompletionText


def feed(text: CompletionText, pieces: list[bytes], first_index: int = 0):
    frames, stopped = [], False
    for offset, piece in enumerate(pieces):
        new, stopped = text.push(first_index + offset, 100 + offset, piece)
        frames += new
        if stopped:
            return frames, True
    return frames + text.finish(), False


def test_a_character_split_across_tokens_lands_in_the_completing_token() -> None:
    pieces = ["é".encode()[:1], "é".encode()[1:] + b"t", "🌊".encode()[:2], "🌊".encode()[2:]]
    frames, _ = feed(CompletionText(), pieces)
    assert [f.text for f in frames] == ["", "ét", "", "🌊"]
    assert [f.index for f in frames] == [0, 1, 2, 3]


def test_invalid_and_unfinished_bytes_are_dropped_like_errors_ignore() -> None:
    pieces = [b"ok", b"\xff", b" then", "€".encode()[:2]]
    frames, _ = feed(CompletionText(), pieces)
    joined = "".join(f.text for f in frames)
    assert joined == b"".join(pieces).decode("utf-8", errors="ignore") == "ok then"
    assert len(frames) == 4


def test_a_stop_string_ends_the_text_before_it() -> None:
    frames, stopped = feed(CompletionText(("END",)), [b"Hello", b" E", b"N", b"Dless", b"more"])
    assert stopped
    assert "".join(f.text for f in frames) == "Hello "
    assert [f.index for f in frames] == [0, 1]  # the frame with " E" is cut at the stop


def test_text_that_might_start_a_stop_is_held_then_released() -> None:
    text = CompletionText(("\n\n",))
    first, _ = text.push(0, 1, b"line\n")
    assert first == []  # "\n" could be the start of "\n\n"
    second, stopped = text.push(1, 2, b"next")
    assert not stopped
    assert [(f.index, f.text) for f in second] == [(0, "line\n"), (1, "next")]


def test_held_frames_come_out_at_the_end() -> None:
    frames, stopped = feed(CompletionText(("<|im_end|>",)), [b"a", b" <|im"])
    assert not stopped
    assert [f.text for f in frames] == ["a", " <|im"]


def test_the_earliest_of_several_stops_wins() -> None:
    frames, stopped = feed(CompletionText(("b", "xyz")), [b"ax", b"yzb"])
    assert stopped
    assert "".join(f.text for f in frames) == "a"


def test_a_primed_prefix_continues_a_split_character() -> None:
    whole = "né".encode()
    text = CompletionText()
    text.prime(whole[:2])  # "n" and the first byte of "é", produced by another node
    frames, _ = feed(text, [whole[2:], b"!"], first_index=1)
    assert [(f.index, f.text) for f in frames] == [(1, "é"), (2, "!")]
