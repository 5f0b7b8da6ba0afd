"""dinet: a decentralized inference network.

The public surface for programs that embed dinet; the `din` command is built on it.
"""

from dinet.client.ask import Answer, ask
from dinet.client.network import Network, open_network
from dinet.config import ClientSettings, NodeSettings
from dinet.errors import DinetError
from dinet.node.service import NodeStarted, serve_node
from dinet.wire.messages import ChatMessage, GenerationParams

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "ChatMessage",
    "ClientSettings",
    "DinetError",
    "GenerationParams",
    "Network",
    "NodeSettings",
    "NodeStarted",
    "ask",
    "open_network",
    "serve_node",
]
