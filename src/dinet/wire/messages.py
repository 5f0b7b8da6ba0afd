"""Every message of the dinet protocols: frozen, strict, tagged by `kind`.

Frames carry one message as UTF-8 JSON. Unknown fields, unknown kinds and
values out of range are refused with `MalformedMessage`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from dinet.errors import MalformedMessage
from dinet.wire.ids import ModelHash, RequestId

MAX_PROMPT_CHARS = 64_000
MAX_MESSAGES = 256
MAX_TOKENS_LIMIT = 4096
MAX_RECEIPT_BYTES = 4096
MAX_DEADLINE_MS = 3_600_000  # an hour: beyond it, no deadline is worth stating
MAX_GRAMMAR_CHARS = 64_000
MAX_LOGIT_BIAS = 300  # token biases in one request, as OpenAI's limit
MAX_TOP_LOGPROBS = 20  # as OpenAI's limit
MAX_PIECE_BYTES = 256  # one token's bytes
MAX_TOOLS = 32  # functions offered to the model in one request
MAX_TOOL_CALLS = 16  # calls in one assistant message
MAX_TOOL_CHARS = 16_000  # one function's definition: its description, or its parameters' schema
TOOL_NAME_PATTERN = "^[A-Za-z0-9_.-]{1,64}$"  # as OpenAI's function names
CHANNEL_PATTERN = "^0x[0-9a-f]{64}$"  # a payment channel's id on its contract


class Message(BaseModel):
    # NaN and Infinity are not JSON (RFC 8259), yet the parser takes them: refuse them, or a
    # manifest whose expires_at is NaN would never expire and a NaN issued_at pass every check.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class ToolCall(Message):
    """A call of one of the request's tools that an assistant message made: `arguments` is
    the text of a JSON object (as OpenAI's API carries it)."""

    id: str = Field(min_length=1, max_length=64)
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    arguments: str = Field(max_length=MAX_PROMPT_CHARS)


class ChatMessage(Message):
    """One turn. An assistant turn may carry the `tool_calls` it made; a `tool` turn is a
    call's result, naming the call in `tool_call_id`. Both left out of the frame when absent."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(max_length=MAX_PROMPT_CHARS)
    tool_calls: tuple[ToolCall, ...] = Field(
        default=(), max_length=MAX_TOOL_CALLS, exclude_if=lambda v: not v
    )
    tool_call_id: str | None = Field(
        default=None, min_length=1, max_length=64, exclude_if=lambda v: v is None
    )

    def model_post_init(self, _context: object) -> None:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message makes tool calls")
        if (self.tool_call_id is not None) != (self.role == "tool"):
            raise ValueError("a tool message, and only a tool message, names its tool_call_id")


class Tool(Message):
    """A function the model may call, given to the chat template as OpenAI's `tools` entry
    `{"type": "function", "function": {"name", "description", "parameters"}}`:
    `parameters` is the text of its arguments' JSON schema (a JSON object)."""

    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str = Field(default="", max_length=MAX_TOOL_CHARS)
    parameters: str = Field(default="{}", min_length=2, max_length=MAX_TOOL_CHARS)

    def model_post_init(self, _context: object) -> None:
        try:
            schema = json.loads(self.parameters, parse_constant=_not_json)
        except ValueError:
            schema = None
        if not isinstance(schema, dict):
            raise ValueError("a tool's parameters are the text of a JSON object (a JSON schema)")

    def as_openai(self) -> dict[str, object]:
        """The entry chat templates read from `tools`, as OpenAI's API and Hugging Face give it."""
        parameters = json.loads(self.parameters)
        function = {"name": self.name, "description": self.description, "parameters": parameters}
        return {"type": "function", "function": function}


def _not_json(constant: str) -> object:
    raise ValueError(f"{constant} is not JSON")


class GenerationParams(Message):
    """What to generate: either chat `messages` or a raw `prompt`.

    `prefix_tokens` are completion tokens already produced elsewhere (failover):
    the engine continues after them, and the sampler's draw for token i stays
    keyed by (seed, i) counted from the start of the completion.
    `grammar` restricts every token to those the grammar allows (see
    `dinet.engine.sampler.Sampler.choose_allowed`); `logit_bias`, the penalties and
    `min_p` adjust the logits before the sampler sees them (`dinet.engine.adjust`).
    """

    messages: tuple[ChatMessage, ...] | None = Field(default=None, max_length=MAX_MESSAGES)
    prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    max_tokens: int = Field(default=128, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int = Field(default=0, ge=0, lt=2**63)
    stop: tuple[Annotated[str, Field(min_length=1, max_length=64)], ...] = Field(default=(), max_length=4)
    prefix_tokens: tuple[int, ...] = Field(default=(), max_length=MAX_TOKENS_LIMIT)
    # A GBNF grammar (llama.cpp's format, start rule `root`) every completion token must
    # keep to: structured outputs. Left out of the frame when absent, so older nodes read
    # plain requests; an older node refuses a request that has one (it cannot keep to it).
    grammar: str | None = Field(
        default=None, min_length=1, max_length=MAX_GRAMMAR_CHARS, exclude_if=lambda v: v is None
    )
    # Sampling controls (see `dinet.engine.adjust`), each left out of the frame when off.
    logit_bias: tuple[tuple[Annotated[int, Field(ge=0)], Annotated[float, Field(ge=-100, le=100)]], ...] = (
        Field(default=(), max_length=MAX_LOGIT_BIAS, exclude_if=lambda v: not v)
    )
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=2.0, exclude_if=lambda v: v == 1.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0, exclude_if=lambda v: v == 0.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0, exclude_if=lambda v: v == 0.0)
    min_p: float = Field(default=0.0, ge=0.0, lt=1.0, exclude_if=lambda v: v == 0.0)
    # Log-probabilities in every token frame: the token's own and the `logprobs` most
    # likely tokens' (0: the token's only), of the logits the sampler chose from (after
    # the adjustments and the grammar) at temperature 1. None: no log-probabilities.
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS, exclude_if=lambda v: v is None)
    # Functions the chat template renders for the model to call (chat only; a model whose
    # template declares no tool support answers `bad_request`). Left out when empty.
    tools: tuple[Tool, ...] = Field(default=(), max_length=MAX_TOOLS, exclude_if=lambda v: not v)

    def model_post_init(self, _context: object) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of messages or prompt")
        if self.tools and self.messages is None:
            raise ValueError("tools go with messages, not with a raw prompt")

    @property
    def uses_tools(self) -> bool:
        """Whether the chat template must render tools: offered, called or answered."""
        return bool(self.tools) or any(m.tool_calls or m.role == "tool" for m in self.messages or ())

    @property
    def prompt_chars(self) -> int:
        """The prompt's characters: the raw prompt's, or those the chat template renders:
        all messages' contents, their tool calls' names and arguments, and the tools'
        names, descriptions and parameters (as carried, so every implementation counts alike)."""
        if self.prompt is not None:
            return len(self.prompt)
        messages = self.messages or ()
        calls = sum(len(c.name) + len(c.arguments) for m in messages for c in m.tool_calls)
        tools = sum(len(t.name) + len(t.description) + len(t.parameters) for t in self.tools)
        return sum(len(m.content) for m in messages) + calls + tools


class InferRequest(Message):
    kind: Literal["infer"] = "infer"
    request_id: RequestId = Field(min_length=1, max_length=64)
    model_id: str | None = Field(default=None, max_length=128)
    model_hash: ModelHash | None = Field(default=None, max_length=128)
    params: GenerationParams
    # The time left to answer when the request was sent, in ms: relative, because peers'
    # clocks disagree. Left out of the frame when absent, so older nodes read it too.
    deadline_ms: int | None = Field(default=None, ge=1, le=MAX_DEADLINE_MS, exclude_if=lambda v: v is None)
    # The payment channel (on the chain the node names in its manifest) that pays for this
    # answer; see docs/incentives.md. Left out when absent, so older nodes read it too.
    channel: str | None = Field(default=None, pattern=CHANNEL_PATTERN, exclude_if=lambda v: v is None)


class TokenChoice(Message):
    """A token and its log-probability under the distribution the sampler chose from."""

    token_id: int = Field(ge=0)
    piece: str = Field(max_length=2 * MAX_PIECE_BYTES, pattern="^([0-9a-f]{2})*$")  # its bytes, in hex
    logprob: float = Field(le=0.0)


class TokenLogprobs(Message):
    """What a request with `logprobs` learns of one token: its own log-probability and the
    `logprobs` most likely tokens at its position (see `GenerationParams.logprobs`)."""

    logprob: float = Field(le=0.0)
    piece: str = Field(max_length=2 * MAX_PIECE_BYTES, pattern="^([0-9a-f]{2})*$")
    top: tuple[TokenChoice, ...] = Field(default=(), max_length=MAX_TOP_LOGPROBS)


class TokenFrame(Message):
    """One completion token. `text` may be empty while a UTF-8 character is incomplete."""

    kind: Literal["token"] = "token"
    index: int = Field(ge=0)
    token_id: int = Field(ge=0)
    text: str
    logprobs: TokenLogprobs | None = Field(default=None, exclude_if=lambda v: v is None)


class Usage(Message):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)


class SignedReceipt(Message):
    """Sent by the node inside its end frame."""

    kind: Literal["receipt"] = "receipt"
    body: str = Field(max_length=MAX_RECEIPT_BYTES)
    node_signature: str = Field(max_length=256)


class ChannelVoucher(Message):
    """The client's promise, signed for the channel's contract (EIP-712), that the node may
    claim `amount` (wei, cumulative over the channel's answers) from the channel's deposit."""

    channel: str = Field(pattern=CHANNEL_PATTERN)
    amount: int = Field(ge=0, lt=2**256)
    signature: str = Field(pattern="^0x[0-9a-f]{130}$")


class CountersignedReceipt(Message):
    """Sent back by the client after the end frame; both sides keep it. A request paid by
    a channel also carries the channel's voucher, which is no part of the receipt."""

    kind: Literal["countersigned_receipt"] = "countersigned_receipt"
    body: str = Field(max_length=MAX_RECEIPT_BYTES)
    node_signature: str = Field(max_length=256)
    client_signature: str = Field(max_length=256)
    voucher: ChannelVoucher | None = Field(default=None, exclude_if=lambda v: v is None)

    @property
    def receipt_id(self) -> str:
        return receipt_id(self.body)


def receipt_id(body: str) -> str:
    """A receipt's id: sha256 of its body's bytes."""
    return hashlib.sha256(body.encode()).hexdigest()


class EndFrame(Message):
    kind: Literal["end"] = "end"
    finish_reason: Literal["stop", "length"]
    usage: Usage
    ttft_ms: float = Field(ge=0)
    tokens_per_s: float = Field(ge=0)
    model_id: str = ""
    model_hash: ModelHash = ModelHash("")
    receipt: SignedReceipt | None = None  # the node's signed receipt; see docs/protocol.md


ErrorCode = Literal[
    "bad_request",  # the request could not be decoded or is out of range
    "too_large",  # a frame above the size cap
    "unknown_model",  # this node does not serve that model
    "busy",  # no capacity now: try another peer
    "deadline",  # this node's queue and speed cannot meet the request's deadline: try another peer
    "rate_limited",  # this peer is over its request rate or concurrency here: try another peer
    "probation",  # more tokens than a client without standing here may ask: another peer, or fewer
    "engine_crashed",  # the worker died; it is being restarted
    "internal",  # anything else
    "unknown_session",  # /dinet/shard/1: no such session here (never opened, ended or evicted)
    "wrong_span",  # /dinet/shard/1: this stage does not hold the layers asked for
    "relay_failed",  # /dinet/shard/1: the next stage of a relayed session cannot be reached
    "payment_required",  # this node serves only requests paid by a channel with room for them
]


class QueuedFrame(Message):
    """The request waits for a free slot; sent about once a second while it does."""

    kind: Literal["queued"] = "queued"
    waiting: int = Field(ge=0)


class ErrorFrame(Message):
    kind: Literal["error"] = "error"
    code: ErrorCode
    message: str = Field(max_length=1000)


InferReply = Annotated[TokenFrame | EndFrame | ErrorFrame | QueuedFrame, Field(discriminator="kind")]

_reply_adapter: TypeAdapter[TokenFrame | EndFrame | ErrorFrame | QueuedFrame] = TypeAdapter(InferReply)


def decode_request(payload: bytes) -> InferRequest:
    try:
        return InferRequest.model_validate_json(payload)
    except ValidationError as exc:
        raise MalformedMessage(_brief(exc)) from None


def decode_reply(payload: bytes) -> TokenFrame | EndFrame | ErrorFrame | QueuedFrame:
    try:
        return _reply_adapter.validate_json(payload)
    except ValidationError as exc:
        raise MalformedMessage(_brief(exc)) from None


def decode_countersigned(payload: bytes) -> CountersignedReceipt:
    try:
        return CountersignedReceipt.model_validate_json(payload)
    except ValidationError as exc:
        raise MalformedMessage(_brief(exc)) from None


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json(exclude_defaults=False).encode()


def _brief(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "message"
    return f"invalid message at {where}: {first['msg']}"[:300]
