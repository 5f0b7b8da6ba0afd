"""The tokenizer a GGUF carries, rebuilt with the `tokenizers` package.

llama.cpp's "gpt2" tokenizer is byte-level BPE: the vocabulary and merges are in the
file, token strings spell bytes with GPT-2's byte-to-character table. Text is first
split by the pre-tokenizer the file names (`tokenizer.ggml.pre`); for "smollm" that
is every digit on its own, then the GPT-2 pattern. Control tokens (`<|im_start|>`...)
are matched in the text as special tokens, as llama.cpp does with `special=True`.

Which tokens end a generation follows llama.cpp's rules: the eos/eot/eom ids, the
fill-in-the-middle repo/separator/pad tokens, and control tokens known by their text.
The tests prove ids, pieces and end-of-generation equal to llama.cpp's for the
default model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers

from dinet.engine.torch._gguf_file import GGUFFile
from dinet.errors import UnsupportedModel
from dinet.wire.messages import ChatMessage

_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizers by `tokenizer.ggml.pre`: regexes that split off pieces before the GPT-2 pattern.
_PRE_SPLITS: dict[str, tuple[str, ...]] = {"smollm": (r"\p{N}",), "gpt-2": (), "default": ()}

# Control tokens that end a generation, by their text (as llama.cpp lists them).
_EOG_TEXTS = frozenset(
    {
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "<|eom_id|>",
        "<EOT>",
        "_<EOT>",
        "<|end_of_text|>",
        "<end_of_utterance>",
    }
)
_FIM_TEXTS = frozenset(
    {
        "<|fim_pad|>",
        "<fim-pad>",
        "<PAD>",
        "<|fim_repo|>",
        "<|repo_name|>",
        "<fim-repo>",
        "<REPO>",
        "<reponame>",
        "<|file_sep|>",
    }
)


def _byte_chars() -> dict[str, int]:
    """GPT-2's table from printable characters back to the bytes they stand for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


class GGUFTokenizer:
    """Token ids, token bytes and the chat prompt of one GGUF, without llama.cpp."""

    def __init__(self, fields: dict[str, Any]) -> None:
        kind = fields.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise UnsupportedModel(f"tokenizer {kind!r} is not supported (only gpt2 byte-level BPE)")
        pre = str(fields.get("tokenizer.ggml.pre", "default"))
        if pre not in _PRE_SPLITS:
            raise UnsupportedModel(f"pre-tokenizer {pre!r} is not supported")
        self._tokens: list[str] = list(fields["tokenizer.ggml.tokens"])
        self._types: list[int] = [int(t) for t in fields["tokenizer.ggml.token_type"]]
        self.n_vocab = len(self._tokens)
        self.bos_id = int(fields.get("tokenizer.ggml.bos_token_id", -1))
        self.eos_id = int(fields.get("tokenizer.ggml.eos_token_id", -1))
        self._cls_id = int(fields.get("tokenizer.ggml.cls_token_id", -1))
        self._sep_id = int(fields.get("tokenizer.ggml.seperator_token_id", -1))  # sic, the GGUF key
        self._add_bos = bool(fields.get("tokenizer.ggml.add_bos_token", False))
        self._add_eos = bool(fields.get("tokenizer.ggml.add_eos_token", False))
        self._template: str | None = fields.get("tokenizer.chat_template")
        self._tokenizer = self._build(list(fields["tokenizer.ggml.merges"]), _PRE_SPLITS[pre])
        self._pieces = self._all_pieces()
        self._eog = self._eog_ids(fields)

    @classmethod
    def from_gguf(cls, path: Path) -> GGUFTokenizer:
        return cls(GGUFFile(path).metadata)

    def _build(self, merges: list[str], splits: tuple[str, ...]) -> Tokenizer:
        vocab = {token: i for i, token in enumerate(self._tokens)}
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs))  # type: ignore[arg-type]
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                *(pre_tokenizers.Split(Regex(s), behavior="isolated") for s in splits),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
        tokenizer.add_special_tokens(
            [
                AddedToken(t, special=True, normalized=False)
                for t, kind in zip(self._tokens, self._types, strict=True)
                if kind == _CONTROL
            ]
        )
        tokenizer.add_tokens(
            [
                AddedToken(t, normalized=False)
                for t, kind in zip(self._tokens, self._types, strict=True)
                if kind == _USER_DEFINED
            ]
        )
        return tokenizer

    def _all_pieces(self) -> list[bytes]:
        """The bytes each token stands for when decoded (control tokens decode to nothing)."""
        table = _byte_chars()
        pieces = []
        for token, kind in zip(self._tokens, self._types, strict=True):
            if kind == _NORMAL:
                pieces.append(bytes(table[c] for c in token if c in table))
            elif kind == _USER_DEFINED:
                pieces.append(token.encode("utf-8"))
            elif kind == _BYTE:
                pieces.append(bytes([int(token[3:5], 16)]))
            else:
                pieces.append(b"")
        return pieces

    def _eog_ids(self, fields: dict[str, Any]) -> frozenset[int]:
        ids = {
            i
            for i, (t, kind) in enumerate(zip(self._tokens, self._types, strict=True))
            if t in _EOG_TEXTS or (t in _FIM_TEXTS and kind == _CONTROL)
        }
        for key in ("eos", "eot", "eom"):
            found = int(fields.get(f"tokenizer.ggml.{key}_token_id", -1))
            if found >= 0:
                ids.add(found)
        return frozenset(ids)

    def tokenize(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Ids of `text`, control tokens in it recognised (llama.cpp's `special=True`)."""
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids if text else []
        if add_bos and self._add_bos and self.bos_id >= 0:
            return [self.bos_id, *ids]
        return list(ids)

    def chat_prompt(self, messages: Sequence[ChatMessage]) -> tuple[list[int], tuple[str, ...]]:
        """Prompt ids and stop strings, as `dinet.engine.llama._llama_cpp.chat_prompt` makes them."""
        if self._template is None:
            raise UnsupportedModel("this model has no chat template")
        formatter = Jinja2ChatFormatter(
            template=self._template,
            eos_token=self._tokens[self.eos_id] if self.eos_id >= 0 else "",
            bos_token=self._tokens[self.bos_id] if self.bos_id >= 0 else "",
            add_generation_prompt=True,
            stop_token_ids=[self.eos_id],
        )
        as_dicts: Any = [{"role": m.role, "content": m.content} for m in messages]
        result = formatter(messages=as_dicts)
        tokens = self.tokenize(result.prompt, add_bos=not result.added_special)
        stops = [result.stop] if isinstance(result.stop, str) else list(result.stop or [])
        return tokens, tuple(s for s in stops if s)

    def raw_prompt(self, text: str) -> list[int]:
        """Prompt ids of a raw completion prompt, as `dinet.engine.llama._llama_cpp.raw_prompt` makes them."""
        bos_id = self._cls_id if self._cls_id != -1 else self.bos_id
        bos = [bos_id] if self._add_bos and bos_id != -1 else []
        eos = [self._sep_id if self._sep_id != -1 else self.eos_id]
        if not self._add_eos and self._sep_id == -1:
            eos = []
        return bos + self.tokenize(text) + eos

    def piece(self, token: int) -> bytes:
        return self._pieces[token]

    def is_eog(self, token: int) -> bool:
        return token in self._eog

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None
