"""Every error dinet raises on purpose.

    DinetError
    ├── ConfigError          bad flags, settings or home directory
    ├── ClientClosed         a library client that was closed (or whose network stopped)
    ├── WireError            a frame or message that cannot be decoded
    │   ├── FrameTooLarge    a length prefix above the cap
    │   └── MalformedMessage bytes that are not a valid message of the protocol
    ├── PeerError            a remote peer failed or misbehaved
    │   ├── PeerUnreachable  dialing failed or timed out
    │   ├── PeerStalled      a peer stopped sending mid-answer for longer than its speed allows
    │   ├── AnswerTimedOut   no complete answer within the caller's time limit
    │   ├── ManifestError    a node's capability manifest that is forged, expired or inconsistent
    │   ├── ModelVersionsError a model-version record that is forged, expired or under another key
    │   ├── DemandRecordError a demand record that is forged, malformed or expired
    │   ├── BadChunk         a chunk whose bytes do not match the model card
    │   └── RemoteError      the peer answered with an error frame (carries its code)
    ├── RoutingError         no peer can take the request
    │   ├── NoCapablePeer
    │   └── DeadlineUnmet    no peer can answer within the request's deadline
    ├── InferenceError       the engine could not produce an answer
    │   ├── EngineCrashed    the worker process died mid-request
    │   ├── EngineUnavailable the worker could not be started
    │   └── BadShardInput    token ids or hidden states a layer-range stage cannot take
    ├── ModelError           a model file that is missing or not a usable GGUF
    │   ├── ModelNotFound
    │   ├── BadModelFile     not a GGUF file, or a header that contradicts the file
    │   ├── ModelCorrupted   stored bytes that do not match the model's hash
    │   ├── ModelCardError   a model card that is forged, malformed or not for the hash asked
    │   ├── UnsupportedModel a GGUF the torch layer-range engine cannot run
    │   ├── BadLayerSpan     a layer range the model does not have (or START >= STOP)
    │   └── PullFailed       no peer could supply every chunk of a model
    ├── RequestError         a user's request (library, CLI or HTTP API) malformed or out of range
    │   └── Unauthorized     a missing or wrong API key
    ├── LedgerError          the ledger cannot record or prove receipts
    │   ├── BadReceipt       a forged, malformed or inaccurate receipt (refused, never stored)
    │   ├── ReplayedReceipt  a receipt, or another for the same request and node, already counted
    │   └── LedgerCorrupted  stored rows that fail their own signatures or sums
    ├── TrustError           reputation and voting
    │   ├── ReputationError  the reputation file cannot record or be read
    │   └── NoMajority       replicas disagreed and nothing could decide between them
    └── SettleError          payment channels on an EVM chain
        ├── BadVoucher       a malformed voucher, or a signature that recovers no signer
        └── ChainError       a chain transaction or call that failed (carries the revert reason)

Callers map classes, never message text, to exit codes and API errors.
"""

from __future__ import annotations


class DinetError(Exception):
    """Base of every error dinet raises on purpose."""


class ConfigError(DinetError):
    pass


class ClientClosed(DinetError):
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


class PeerStalled(PeerError):
    pass


class AnswerTimedOut(PeerError):
    pass


class ManifestError(PeerError):
    pass


class ModelVersionsError(PeerError):
    pass


class DemandRecordError(PeerError):
    pass


class DebtRecordError(PeerError):
    """A gossiped debt record that is forged, malformed or expired."""


class BadChunk(PeerError):
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


class DeadlineUnmet(RoutingError):
    pass


class InferenceError(DinetError):
    pass


class EngineCrashed(InferenceError):
    pass


class EngineUnavailable(InferenceError):
    pass


class BadShardInput(InferenceError):
    pass


class ModelError(DinetError):
    pass


class ModelNotFound(ModelError):
    pass


class BadModelFile(ModelError):
    pass


class ModelCorrupted(ModelError):
    pass


class ModelCardError(ModelError):
    pass


class PullFailed(ModelError):
    pass


class UnsupportedModel(ModelError):
    pass


class BadLayerSpan(ModelError):
    pass


class RequestError(DinetError):
    """A user's request (library call, CLI or HTTP API) that is malformed or out of range;
    `param` names the option or field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class Unauthorized(RequestError):
    pass


class LedgerError(DinetError):
    pass


class BadReceipt(LedgerError):
    pass


class ReplayedReceipt(LedgerError):
    pass


class LedgerCorrupted(LedgerError):
    pass


class TrustError(DinetError):
    pass


class ReputationError(TrustError):
    pass


class NoMajority(TrustError):
    pass


class SettleError(DinetError):
    pass


class BadVoucher(SettleError):
    pass


class ChainError(SettleError):
    """A transaction or call the chain refused; `reason` is the contract's revert reason
    ("stale voucher", "not expired" ...) when it gave one, else the node's message."""

    def __init__(self, reason: str, action: str = "") -> None:
        super().__init__(f"{action} failed: {reason}" if action else reason)
        self.reason = reason
        self.action = action


def first_dinet_error(exc: BaseException) -> DinetError | None:
    """Our error, or the first one inside trio's exception groups; None if there is none."""
    if isinstance(exc, DinetError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = first_dinet_error(inner)
            if found is not None:
                return found
    return None
