"""Messages of `/dinet/verify/1`: re-score a claimed completion under a model.

A client sends one `verify` frame (the original request's prompt and decoding
parameters, and the completion tokens some peer claimed); the verifier answers with
one `scores` frame (a `PositionScore` per claimed token, computed from its own single
prefill over prompt + claim) or an `error` frame. The worker pipe carries the same
request as `score` (no ids) and the same `scores` reply.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter, ValidationError, model_validator

from dinet.errors import MalformedMessage
from dinet.wire.ids import ModelHash, RequestId
from dinet.wire.messages import (
    MAX_TOKENS_LIMIT,
    ErrorFrame,
    GenerationParams,
    Message,
    QueuedFrame,
    _brief,
)

MAX_CLAIMED_TOKENS = MAX_TOKENS_LIMIT


class ScoreRequest(Message):
    """To the worker: score `tokens` as the completion of `params`' prompt."""

    kind: Literal["score"] = "score"
    params: GenerationParams
    tokens: tuple[int, ...] = Field(min_length=1, max_length=MAX_CLAIMED_TOKENS)

    @model_validator(mode="after")
    def _no_prefix(self) -> ScoreRequest:
        if self.params.prefix_tokens:
            raise ValueError("prefix_tokens has no meaning here: put every claimed token in tokens")
        return self


class VerifyRequest(Message):
    """To a verifier peer. `model_hash` is required: a claim is about one exact model."""

    kind: Literal["verify"] = "verify"
    request_id: RequestId = Field(min_length=1, max_length=64)
    model_hash: ModelHash = Field(min_length=1, max_length=128)
    params: GenerationParams
    tokens: tuple[int, ...] = Field(min_length=1, max_length=MAX_CLAIMED_TOKENS)

    @model_validator(mode="after")
    def _no_prefix(self) -> VerifyRequest:
        if self.params.prefix_tokens:
            raise ValueError("prefix_tokens has no meaning here: put every claimed token in tokens")
        return self

    def to_worker(self) -> ScoreRequest:
        return ScoreRequest(params=self.params, tokens=self.tokens)


class PositionScore(Message):
    """How the verifier's model sees one claimed token.

    `logprob` and `best_logprob` are log-softmax values of the raw logits (temperature
    1): the claimed token's and the top token's. `rank` counts the tokens ordered
    before it (by logit, ties to the lower id). With temperature > 0, [`lo`, `hi`) is
    the claimed token's interval of the sampler's draw: the honest sampler emits it
    exactly when `uniform(seed, index)` falls inside (`lo` >= 1: outside the nucleus),
    and `drawn_logprob` is the log-prob of the token the verifier's own sampler draws.
    Under a grammar, all of these are of the logits the grammar leaves (the refused
    tokens' at -inf), and a token the grammar refuses has `allowed` false.
    """

    index: int = Field(ge=0)
    token_id: int = Field(ge=0)
    rank: int = Field(ge=0)
    logprob: float = Field(le=0.0)
    best_logprob: float = Field(le=0.0)
    lo: float | None = Field(default=None, ge=0.0)
    hi: float | None = Field(default=None, ge=0.0)
    drawn_logprob: float | None = Field(default=None, le=0.0)  # sampled: the verifier's own draw's
    # False: the request rules this token out here: its grammar (or broken before), or min-p
    allowed: bool = Field(default=True, exclude_if=lambda v: v)


class ScoresFrame(Message):
    kind: Literal["scores"] = "scores"
    model_hash: ModelHash = Field(default=ModelHash(""), max_length=128)  # set by the node: what was scored
    prompt_tokens: int = Field(ge=0)
    positions: tuple[PositionScore, ...] = Field(max_length=MAX_CLAIMED_TOKENS)
    elapsed_ms: float = Field(ge=0.0)  # the worker's scoring time


def decode_verify_request(payload: bytes) -> VerifyRequest:
    try:
        return VerifyRequest.model_validate_json(payload)
    except ValidationError as exc:
        raise MalformedMessage(_brief(exc)) from None


def decode_scores(payload: bytes) -> ScoresFrame:
    try:
        return ScoresFrame.model_validate_json(payload)
    except ValidationError as exc:
        raise MalformedMessage(_brief(exc)) from None


VerifyReply = Annotated[ScoresFrame | ErrorFrame | QueuedFrame, Field(discriminator="kind")]
_verify_reply: TypeAdapter[ScoresFrame | ErrorFrame | QueuedFrame] = TypeAdapter(VerifyReply)


def decode_verify_reply(payload: bytes) -> ScoresFrame | ErrorFrame | QueuedFrame:
    """A verifier's frame, by its `kind` wherever that stands in the object."""
    try:
        return _verify_reply.validate_json(payload)
    except ValidationError as exc:
        raise MalformedMessage(_brief(exc)) from None
