"""dinet: a decentralized inference network.

The public surface for programs that embed dinet; the `din` command is built on it.
Names are imported on first use, so that `import dinet.engine` in a worker process
does not pull in libp2p and the rest of the node.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "Answer": "dinet.client.ask",
    "ask": "dinet.client.ask",
    "Network": "dinet.client.network",
    "open_network": "dinet.client.network",
    "ClientSettings": "dinet.config",
    "NodeSettings": "dinet.config",
    "DinetError": "dinet.errors",
    "NodeStarted": "dinet.node.service",
    "serve_node": "dinet.node.service",
    "ChatMessage": "dinet.wire.messages",
    "GenerationParams": "dinet.wire.messages",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'dinet' has no attribute {name!r}")
