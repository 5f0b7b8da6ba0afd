"""Every error dinet raises on purpose.

    DinetError
    ├── ConfigError          bad flags, settings or home directory
    ├── WireError            a frame or message that cannot be decoded
    │   ├── FrameTooLarge    a length prefix above the cap
    │   └── MalformedMessage bytes that are not a valid message of the protocol
    ├── PeerError            a remote peer failed or misbehaved
    │   ├── PeerUnreachable  dialing failed or timed out
    │   ├── AnswerTimedOut   no complete answer within the caller's time limit
    │   ├── ManifestError    a manifest that is forged, expired or inconsistent
    │   └── RemoteError      the peer answered with an error frame (carries its code)
    ├── RoutingError         no peer can take the request
    │   └── NoCapablePeer
    ├── InferenceError       the engine could not produce an answer
    │   ├── EngineCrashed    the worker process died mid-request
    │   └── EngineUnavailable the worker could not be started
    └── ModelError           a model file that is missing or not a usable GGUF
        └── ModelNotFound

Callers map classes, never message text, to exit codes and API errors.
"""

from __future__ import annotations


class DinetError(Exception):
    """Base of every error dinet raises on purpose."""


class ConfigError(DinetError):
    pass


class WireError(DinetError):
    pass


class FrameTooLarge(WireError):
    pass


class MalformedMessage(WireError):
    pass


class PeerError(DinetError):
    pass


class PeerUnreachable(PeerError):
    pass


class AnswerTimedOut(PeerError):
    pass


class ManifestError(PeerError):
    pass


class RemoteError(PeerError):
    """The remote peer answered with an error frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RoutingError(DinetError):
    pass


class NoCapablePeer(RoutingError):
    pass


class InferenceError(DinetError):
    pass


class EngineCrashed(InferenceError):
    pass


class EngineUnavailable(InferenceError):
    pass


class ModelError(DinetError):
    pass


class ModelNotFound(ModelError):
    pass
