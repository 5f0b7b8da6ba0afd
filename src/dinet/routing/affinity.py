"""Cache-aware routing: the next turn of a chat goes where its beginning already is.

A node keeps the keys and values of recent prompts (the worker's prefix cache), so a
prompt that begins like one it served costs it only its new part. The client cannot see
tokens, so it remembers prompts by a hash chain over their parts: one link per chat
message (role and content), or per `BLOCK_CHARS` of a raw prompt, each link hashing the
one before it. Two prompts share a link exactly when they share everything up to it.
After an answer, the client remembers the chain of that prompt under the peer that
served it; a later prompt whose chain reaches one of those links has that many
characters cached at that peer (`PrefixMemory.cached_chars`), and the router prefers it
(`dinet.routing.select.cost`). Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dinet.wire.ids import PeerId

BLOCK_CHARS = 256  # a raw prompt's link covers this many characters
MAX_LINKS = 8192  # links remembered over all peers (least recently used go first)


@dataclass(frozen=True)
class Link:
    digest: bytes  # of this part and every part before it
    chars: int  # characters covered up to and including this part


def chat_chain(messages: Sequence[tuple[str, str]]) -> list[Link]:
    """The chain of a chat prompt: one link per (role, content) message."""
    return _chain((f"{role}\x00{content}", len(content)) for role, content in messages)


def raw_chain(prompt: str) -> list[Link]:
    """The chain of a raw prompt: one link per whole block of BLOCK_CHARS characters (a
    last, partial block is left out: the next prompt rarely shares it whole)."""
    whole = len(prompt) // BLOCK_CHARS * BLOCK_CHARS
    return _chain((prompt[i : i + BLOCK_CHARS], BLOCK_CHARS) for i in range(0, whole, BLOCK_CHARS))


def _chain(parts: Iterable[tuple[str, int]]) -> list[Link]:
    """Links over `parts`, each a part's text and the prompt characters it stands for."""
    links: list[Link] = []
    digest, chars = b"dinet-prefix", 0
    for text, covers in parts:
        data = text.encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(digest + len(data).to_bytes(8, "big") + data, digest_size=16).digest()
        chars += covers
        links.append(Link(digest, chars))
    return links


class PrefixMemory:
    """Which peers served prompts with which beginnings, bounded to MAX_LINKS links."""

    def __init__(self, max_links: int = MAX_LINKS) -> None:
        self._max_links = max_links
        self._holders: OrderedDict[bytes, dict[PeerId, int]] = OrderedDict()  # link -> peer -> chars

    def served(self, peer_id: PeerId, chain: Sequence[Link]) -> None:
        """`peer_id` answered a prompt with this chain: it holds every link of it now."""
        for link in chain:
            holders = self._holders.setdefault(link.digest, {})
            holders[peer_id] = link.chars
            self._holders.move_to_end(link.digest)
        while len(self._holders) > self._max_links:
            self._holders.popitem(last=False)

    def forget(self, peer_id: PeerId) -> None:
        """`peer_id` is gone (or restarted): it holds nothing of ours any more."""
        for holders in self._holders.values():
            holders.pop(peer_id, None)

    def cached_chars(self, chain: Sequence[Link]) -> dict[PeerId, int]:
        """For each peer holding some beginning of `chain`, how many characters of it."""
        found: dict[PeerId, int] = {}
        for link in chain:
            for peer_id, chars in self._holders.get(link.digest, {}).items():
                found[peer_id] = max(found.get(peer_id, 0), chars)
        return found
