"""dinet errors as API error objects: classes, never message text, decide the status.

The status and code are chosen once, here; each API only draws its own envelope
around them (OpenAI's by default, Anthropic's from the status).
"""

from __future__ import annotations

from dataclasses import dataclass

from dinet.errors import (
    AnswerTimedOut,
    DeadlineUnmet,
    DinetError,
    InferenceError,
    ModelNotFound,
    NoMajority,
    PeerError,
    RemoteError,
    RequestError,
    RoutingError,
    Unauthorized,
)


@dataclass(frozen=True)
class ApiError:
    status: int
    type: str
    code: str
    message: str
    param: str | None = None

    def body(self) -> dict[str, object]:
        """OpenAI's error object."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def anthropic_body(self) -> dict[str, object]:
        """Anthropic's error envelope: a type per status, no code or param (the message names it)."""
        kind = _ANTHROPIC_TYPES.get(self.status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": self.message}}


# Anthropic's error types for the statuses chosen below; any other status is an `api_error`.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    503: "overloaded_error",  # no peer can take it now; Anthropic's own would be a 529
    504: "timeout_error",
}


# First match wins: subclasses before their bases.
_MAP: tuple[tuple[type[DinetError], int, str, str], ...] = (
    (Unauthorized, 401, "authentication_error", "invalid_api_key"),
    (RequestError, 400, "invalid_request_error", "invalid_request"),
    (ModelNotFound, 404, "invalid_request_error", "model_not_found"),
    (DeadlineUnmet, 504, "timeout", "deadline_unmet"),
    (RoutingError, 503, "service_unavailable", "no_capable_peer"),
    (AnswerTimedOut, 504, "timeout", "answer_timed_out"),
    (NoMajority, 502, "upstream_error", "no_majority"),
    (PeerError, 502, "upstream_error", "peer_failed"),
    (InferenceError, 502, "upstream_error", "inference_failed"),
)


def api_error(exc: DinetError) -> ApiError:
    """The OpenAI error object and HTTP status for one of our errors."""
    if isinstance(exc, RemoteError) and exc.code == "bad_request":
        # The serving node refused the request itself (e.g. a prompt too long for its context).
        return ApiError(400, "invalid_request_error", "invalid_request", exc.message)
    param = exc.param if isinstance(exc, RequestError) else None
    for cls, status, kind, code in _MAP:
        if isinstance(exc, cls):
            return ApiError(status, kind, code, str(exc), param)
    return ApiError(500, "server_error", "internal_error", str(exc))
