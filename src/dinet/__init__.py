"""dinet: a decentralized inference network.

Asking the network from Python, in plain synchronous code:

    import dinet

    with dinet.Client(bootstrap=["/ip4/192.0.2.7/tcp/4001/p2p/12D3KooW..."]) as client:
        answer = client.ask("What is a GGUF file?", max_tokens=64)
        print(answer.text, answer.peer_id)
        for text in client.stream("Tell me a story."):
            print(text, end="", flush=True)

and from trio, `async with dinet.open_client(...) as client:` with the same methods,
awaited. Ids are distinct types (`dinet.PeerId`, `dinet.ModelHash`, `dinet.RequestId`,
all `str` at run time), so a type checker catches a model hash passed as a peer id;
the keyword options of `ask` take plain strings. Every error dinet raises on purpose
is a `dinet.DinetError` (the tree is in `dinet.errors`, re-exported here).
`serve_node` runs a node in-process.

Names other than the errors are imported on first use, so that `import dinet.engine`
in a worker process does not pull in libp2p and the rest of the node.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dinet.errors import (
    AnswerTimedOut,
    BadChunk,
    BadLayerSpan,
    BadModelFile,
    BadReceipt,
    BadShardInput,
    ClientClosed,
    ConfigError,
    DeadlineUnmet,
    DinetError,
    EngineCrashed,
    EngineUnavailable,
    FrameTooLarge,
    InferenceError,
    LedgerCorrupted,
    LedgerError,
    MalformedMessage,
    ManifestError,
    ModelCardError,
    ModelCorrupted,
    ModelError,
    ModelNotFound,
    ModelVersionsError,
    NoCapablePeer,
    NoMajority,
    PeerError,
    PeerStalled,
    PeerUnreachable,
    PullFailed,
    RemoteError,
    ReplayedReceipt,
    ReputationError,
    RequestError,
    RoutingError,
    TrustError,
    Unauthorized,
    UnsupportedModel,
    WireError,
)
from dinet.wire.ids import ModelHash, PeerId, RequestId

if TYPE_CHECKING:
    from dinet.client._async_client import AsyncClient, AsyncStream, Peer, PeerModel, open_client
    from dinet.client._request import Options
    from dinet.client._sync_client import Client, Stream
    from dinet.client.ask import Answer
    from dinet.client.embed import Embeddings
    from dinet.client.verify import Verification
    from dinet.config import NodeSettings
    from dinet.models.fetch import PullReport
    from dinet.node.service import NodeStarted, serve_node

__version__ = "0.1.0"

_LAZY = {
    "Client": "dinet.client._sync_client",
    "Stream": "dinet.client._sync_client",
    "open_client": "dinet.client._async_client",
    "AsyncClient": "dinet.client._async_client",
    "AsyncStream": "dinet.client._async_client",
    "Peer": "dinet.client._async_client",
    "PeerModel": "dinet.client._async_client",
    "Options": "dinet.client._request",
    "Answer": "dinet.client.ask",
    "Embeddings": "dinet.client.embed",
    "Verification": "dinet.client.verify",
    "PullReport": "dinet.models.fetch",
    "NodeSettings": "dinet.config",
    "NodeStarted": "dinet.node.service",
    "serve_node": "dinet.node.service",
}

__all__ = [  # noqa: RUF022 (grouped: the client, a node, the errors)
    "Client",
    "Stream",
    "open_client",
    "AsyncClient",
    "AsyncStream",
    "Options",
    "Answer",
    "Embeddings",
    "Verification",
    "Peer",
    "PeerModel",
    "PullReport",
    "serve_node",
    "NodeSettings",
    "NodeStarted",
    "PeerId",
    "ModelHash",
    "RequestId",
    "DinetError",
    "ConfigError",
    "ClientClosed",
    "WireError",
    "FrameTooLarge",
    "MalformedMessage",
    "PeerError",
    "PeerUnreachable",
    "PeerStalled",
    "AnswerTimedOut",
    "ManifestError",
    "ModelVersionsError",
    "BadChunk",
    "RemoteError",
    "RoutingError",
    "NoCapablePeer",
    "DeadlineUnmet",
    "InferenceError",
    "EngineCrashed",
    "EngineUnavailable",
    "BadShardInput",
    "ModelError",
    "ModelNotFound",
    "ModelCardError",
    "BadModelFile",
    "ModelCorrupted",
    "UnsupportedModel",
    "BadLayerSpan",
    "PullFailed",
    "RequestError",
    "Unauthorized",
    "LedgerError",
    "BadReceipt",
    "ReplayedReceipt",
    "LedgerCorrupted",
    "TrustError",
    "ReputationError",
    "NoMajority",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dinet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
