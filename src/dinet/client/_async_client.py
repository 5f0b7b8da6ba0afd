"""The library client for trio code: `dinet.open_client(...)`.

    async with dinet.open_client(bootstrap=["/ip4/.../p2p/12D3KooW..."]) as client:
        answer = await client.ask("What is a GGUF file?", max_tokens=64)
        async with client.stream("Tell me a story.") as stream:
            async for text in stream:
                print(text, end="")
        print(stream.answer.peer_id)

The synchronous `dinet.Client` runs one of these on its own thread.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Unpack

import trio
from pydantic import ValidationError

from dinet.client._request import Options, build_request, chat_messages
from dinet.client.ask import Answer, ask
from dinet.client.embed import Embeddings, embed
from dinet.client.network import Network, open_network, peer_trust
from dinet.client.options import AskOptions
from dinet.config import ClientSettings
from dinet.errors import ConfigError, PullFailed, RequestError, first_dinet_error
from dinet.models.fetch import PullReport, pull_model
from dinet.models.store import ModelStore
from dinet.wire.ids import ModelHash, PeerId
from dinet.wire.manifest import Manifest
from dinet.wire.messages import TokenFrame

# A library stays quiet unless its user configures logging (py-libp2p logs routine
# failures at ERROR); the records still reach the application's handlers.
for _name in ("dinet", "libp2p", "multiaddr", "zeroconf", "async_service"):
    logging.getLogger(_name).addHandler(logging.NullHandler())

HOLDER_SEARCH_S = 15.0
_HASH = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class PeerModel:
    """A model a peer offers: whole, or as a pipeline stage holding blocks `layers`."""

    model_id: str
    model_hash: ModelHash
    layers: tuple[int, int]
    stage: bool


@dataclass(frozen=True)
class Peer:
    """A peer as this client sees it: its signed manifest, and what the client measured."""

    peer_id: PeerId
    region: str
    addrs: tuple[str, ...]
    models: tuple[PeerModel, ...]
    tokens_per_s: float  # advertised
    ttft_ms: float  # advertised
    price_per_token: float  # credits per completion token
    price_per_prompt_token: float
    active: int  # requests it is serving
    queued: int
    max_concurrent: int
    rtt_ms: float | None  # measured by this client; None if never
    reputation: float | None  # 0 (bad) .. 1 (good) in this client's book; None if never seen
    excluded: bool  # never asked, for a low reputation


class AsyncStream:
    """The texts of an answer's tokens as they arrive; `answer` once the stream has ended.

    Close it (`async with`, or `aclose()`) when leaving early: the peer then stops
    generating."""

    def __init__(self, events: AsyncGenerator[TokenFrame | Answer, None]) -> None:
        self._events = events
        self.answer: Answer | None = None

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> str:
        while True:
            with _typed_errors():
                event = await self._events.__anext__()
            if isinstance(event, Answer):
                self.answer = event
            elif event.text:  # empty while a UTF-8 character is incomplete
                return event.text

    async def aclose(self) -> None:
        await self._events.aclose()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class AsyncClient:
    """A client of the network for trio code; get one from `dinet.open_client`."""

    def __init__(self, network: Network, settings: ClientSettings) -> None:
        self._network = network
        self.settings = settings

    @property
    def peer_id(self) -> PeerId:
        """This client's own peer id (its identity lives in `settings.home`)."""
        return self._network.peer_id

    async def ask(self, prompt: str, **options: Unpack[Options]) -> Answer:
        """One answer to `prompt` (a user message). Options: see `dinet.Options`."""
        return await _to_the_end(self.stream(_prompt(prompt), **options))

    async def chat(self, messages: Sequence[Mapping[str, Any]], **options: Unpack[Options]) -> Answer:
        """The next assistant message after `messages`: OpenAI-style dicts,
        `{"role": "system" | "user" | "assistant", "content": "..."}`."""
        return await _to_the_end(self.stream(messages, **options))

    def stream(
        self, prompt_or_messages: str | Sequence[Mapping[str, Any]], **options: Unpack[Options]
    ) -> AsyncStream:
        """The answer's texts as they arrive (`async for text in ...`); `.answer` after the end."""
        params, asking = build_request(chat_messages(prompt_or_messages), options, self.settings)
        return AsyncStream(ask(self._network, params, asking))

    async def embed(
        self, texts: str | Sequence[str], *, model: str | None = None, **options: Any
    ) -> Embeddings:
        """Vectors for `texts` (one text or a list) from a peer serving an embedding model
        (`model`: its id; any if None). Options: those of `AskOptions` that apply (`verify_rate`,
        `verifiers`, `only_peers`, `policy`, `discover_timeout_s`, `request_timeout_s`)."""
        inputs = [texts] if isinstance(texts, str) else list(texts)
        asking = AskOptions.from_settings(self.settings, model_id=model, **options)
        with _typed_errors():
            return await embed(self._network, inputs, asking)

    async def peers(self, *, wait_s: float = 0.0) -> list[Peer]:
        """The peers found so far (looking for more for `wait_s` seconds), by peer id."""
        network = self._network
        deadline = trio.current_time() + wait_s
        while True:
            with _typed_errors():
                await network.look()
            if trio.current_time() >= deadline:
                break
            await trio.sleep(min(0.3, max(0.0, deadline - trio.current_time())))
        manifests = sorted(network.directory.manifests(), key=lambda m: m.peer_id)
        return [_peer(network, m) for m in manifests]

    async def pull(self, model: str, *, timeout_s: float = HOLDER_SEARCH_S) -> PullReport:
        """Fetch a model (an id peers offer, or a model hash) from peers into this client's home,
        every chunk checked; resumes where an interrupted pull stopped. PullFailed if no peer
        holds it within `timeout_s`."""
        network = self._network
        store = ModelStore(self.settings.home)
        with _typed_errors():
            model_hash, holders = await self._holders(model, timeout_s)
            return await pull_model(network.host, store, model_hash, holders)

    async def _holders(self, model: str, timeout_s: float) -> tuple[ModelHash, list[PeerId]]:
        network = self._network
        with trio.move_on_after(timeout_s):
            while True:
                model_hash = ModelHash(model) if _HASH.match(model) else _most_offered(network, model)
                if model_hash is not None:
                    holders = await network.joiner.holders(model_hash)
                    if holders:
                        return model_hash, holders
                await network.look(None if _HASH.match(model) else model)
                await trio.sleep(0.5)
        raise PullFailed(f"no peer holds {model!r} (looked for {timeout_s:g} s)")


@asynccontextmanager
async def open_client(
    bootstrap: Sequence[str] = (), home: str | Path | None = None, **settings: Any
) -> AsyncIterator[AsyncClient]:
    """A client joined to the network through `bootstrap` multiaddrs (and mDNS unless
    `mdns=False`), keeping its identity, receipts and reputations in `home`.

    Other keywords are `ClientSettings` fields: `max_price`, `verify_rate`,
    `request_timeout_s`, `discover_timeout_s`, ... (ConfigError for a bad one)."""
    async with _open(client_settings(bootstrap, home, settings)) as client:
        yield client


@asynccontextmanager
async def _open(settings: ClientSettings) -> AsyncIterator[AsyncClient]:
    with _typed_errors():
        async with open_network(settings) as network:
            yield AsyncClient(network, settings)


def client_settings(
    bootstrap: Sequence[str], home: str | Path | None, settings: Mapping[str, Any]
) -> ClientSettings:
    """ClientSettings from a library call's arguments; ConfigError names a bad one."""
    fields = {"bootstrap": [bootstrap] if isinstance(bootstrap, str) else list(bootstrap), **settings}
    if home is not None:
        fields["home"] = Path(home).expanduser()
    try:
        return ClientSettings(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigError(f"invalid setting {where}: {first['msg']}") from None


@contextmanager
def _typed_errors() -> Iterator[None]:
    """Our error out of trio's exception groups, so callers can catch `dinet.NoCapablePeer`
    and the like (a group that holds a cancellation is left for trio)."""
    try:
        yield
    except BaseExceptionGroup as group:
        error = first_dinet_error(group)
        if error is None or group.subgroup(trio.Cancelled) is not None:
            raise
        raise error from group


async def _to_the_end(stream: AsyncStream) -> Answer:
    async with stream:
        async for _ in stream:
            pass
    assert stream.answer is not None, "ask ends with its Answer"
    return stream.answer


def _prompt(prompt: object) -> str:
    if not isinstance(prompt, str):
        raise RequestError("the prompt must be a string (use chat() for a list of messages)", "prompt")
    return prompt


def _most_offered(network: Network, model_id: str) -> ModelHash | None:
    counts: dict[ModelHash, int] = {}
    for manifest in network.directory.manifests():
        for offer in manifest.models:
            if offer.model_id == model_id:
                counts[offer.model_hash] = counts.get(offer.model_hash, 0) + 1
    return min(counts, key=lambda h: (-counts[h], h)) if counts else None


def _peer(network: Network, m: Manifest) -> Peer:
    trust = peer_trust(network, m.peer_id)
    reputation = trust["reputation"]
    return Peer(
        peer_id=m.peer_id,
        region=m.region,
        addrs=m.addrs,
        models=tuple(PeerModel(o.model_id, o.model_hash, o.layers, o.stage) for o in m.models),
        tokens_per_s=m.tokens_per_s,
        ttft_ms=m.ttft_ms,
        price_per_token=m.price_per_token,
        price_per_prompt_token=m.price_per_prompt_token,
        active=m.load.active,
        queued=m.load.queued,
        max_concurrent=m.max_concurrent,
        rtt_ms=network.rtt_ms.get(m.peer_id),
        reputation=reputation if isinstance(reputation, float) else None,
        excluded=bool(trust["excluded"]),
    )
