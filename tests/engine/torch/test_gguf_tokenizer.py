"""The tokenizer rebuilt from the GGUF gives llama.cpp's ids, bytes and end tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import llama_cpp.llama_cpp as llama_c
import pytest

from dinet.engine.llama._llama_cpp import chat_formatter, chat_prompt, raw_prompt, token_piece
from dinet.engine.torch.shard import GGUFTokenizer
from dinet.errors import BadModelFile, ModelNotFound
from dinet.wire.messages import ChatMessage

TEXTS = [
    "Hello, world!",
    "1234567890 and 3.14159, 2^10=1024, phone +44 20 7946 0958",
    "Ça va? Él está en Zürich; naïve façade, crème brûlée.",
    "Emoji: 😀🎉👍🏽 and a family 👨‍👩‍👧",
    "中文测试：你好，世界。日本語のテキスト。한국어",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "  leading spaces, trailing spaces   \n\n\ttabs\r\nand CRLF",
    "def f(x):\n    return x**2  # don't\n",
    "<|endoftext|>text between specials<|im_end|>",
    "",
]


@pytest.fixture(scope="module")
def vocab(model_path: Path) -> Iterator[llama_cpp.Llama]:
    """llama.cpp with only the vocabulary loaded: cheap, and the reference for ids."""
    llm = llama_cpp.Llama(model_path=str(model_path), vocab_only=True, verbose=False)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def tokenizer(model_path: Path) -> GGUFTokenizer:
    return GGUFTokenizer.from_gguf(model_path)


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_llama_cpp(tokenizer: GGUFTokenizer, vocab: llama_cpp.Llama, text: str) -> None:
    expected = vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True) if text else []
    assert tokenizer.tokenize(text) == expected


def test_every_token_decodes_and_ends_as_in_llama_cpp(
    tokenizer: GGUFTokenizer, vocab: llama_cpp.Llama
) -> None:
    v = vocab._model.vocab
    pieces = [tokenizer.piece(t) for t in range(vocab.n_vocab())]
    assert pieces == [token_piece(vocab, t) for t in range(vocab.n_vocab())]
    assert max(len(p) for p in pieces) > 32  # beyond Llama.detokenize's buffer
    eog = [t for t in range(vocab.n_vocab()) if tokenizer.is_eog(t)]
    assert eog == [t for t in range(vocab.n_vocab()) if llama_c.llama_vocab_is_eog(v, t)]
    assert tokenizer.eos_id in eog


def test_chat_and_raw_prompts_equal_llama_cpp(tokenizer: GGUFTokenizer, vocab: llama_cpp.Llama) -> None:
    formatter = chat_formatter(vocab)
    assert formatter is not None
    conversations = [
        (ChatMessage(role="user", content="What is 12 + 30?"),),
        (
            ChatMessage(role="system", content="Answer in French. Réponds brièvement."),
            ChatMessage(role="user", content="Où est le 東京タワー? 🗼"),
            ChatMessage(role="assistant", content="À Tokyo."),
            ChatMessage(role="user", content="Et <|im_end|> ça?"),
        ),
    ]
    for messages in conversations:
        assert tokenizer.chat_prompt(messages) == chat_prompt(vocab, formatter, messages)
    for text in TEXTS:
        assert tokenizer.raw_prompt(text) == raw_prompt(vocab, text)


def test_missing_and_garbage_files_are_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        GGUFTokenizer.from_gguf(tmp_path / "absent.gguf")
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    with pytest.raises(BadModelFile):
        GGUFTokenizer.from_gguf(garbage)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(BadModelFile):
        GGUFTokenizer.from_gguf(empty)
