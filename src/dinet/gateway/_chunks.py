"""Models as content over HTTP: what `/dinet/chunks/1` gives peers, for browser tabs.

A tab cannot open libp2p streams to download 100 MB quickly, so the gateway hands out the
chunks of the models held in its home's store (beside a node: the node's own model):

    GET /api/chunks/1                     {"models": [{model_hash, model_id, ...}, ...]}
    GET /api/chunks/1/{model_hash}/card   the signed model card, exactly as stored
    GET /api/chunks/1/{model_hash}/{i}    chunk i's bytes (application/octet-stream)

As on the stream protocol, only complete models are served and a chunk is re-hashed
before it leaves, so a damaged file is refused (404) rather than sent. No API key is
asked: models are public content on the network, and the tab checks every byte itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dinet.errors import ModelCorrupted, ModelNotFound, RequestError
from dinet.models.store import ModelStore, StoredModel
from dinet.wire.ids import ModelHash

PREFIX = "/api/chunks/1"
# Content-addressed: a model hash's card and chunks never change.
IMMUTABLE = {"cache-control": "public, max-age=31536000, immutable"}


class ChunkShelf:
    """The complete models in one home's store, read for HTTP clients."""

    def __init__(self, home: Path) -> None:
        self._store = ModelStore(home)

    async def models(self) -> list[StoredModel]:
        return await trio.to_thread.run_sync(self._complete_models)

    def _complete_models(self) -> list[StoredModel]:
        """Every complete model whose card reads; a damaged one is left out, not an error."""
        root = self._store.root
        found = []
        for directory in sorted(root.iterdir()) if root.is_dir() else []:
            try:
                stored = self._store.get(ModelHash(directory.name))
            except (ModelCorrupted, ModelNotFound):
                continue  # not a model's directory, or its card is damaged
            if stored is not None and stored.complete:
                found.append(stored)
        return found

    async def model(self, model_hash: str) -> StoredModel:
        try:
            stored = await trio.to_thread.run_sync(self._store.get, ModelHash(model_hash))
        except ModelCorrupted as exc:
            raise ModelNotFound(f"model {model_hash} is damaged here: {exc}") from None
        if stored is None or not stored.complete:
            raise ModelNotFound(f"this gateway holds no model {model_hash}")
        return stored

    async def chunk(self, model_hash: str, index: int) -> bytes:
        stored = await self.model(model_hash)
        count = len(stored.card.chunk_hashes)
        if not 0 <= index < count:
            raise RequestError(f"chunk {index} is out of range: model {model_hash[:16]}… has {count} chunks")
        try:
            return await trio.to_thread.run_sync(self._store.read_chunk, stored, index)
        except ModelCorrupted as exc:
            raise ModelNotFound(f"model {model_hash} is damaged here: {exc}") from None


Handler = Callable[[Request], Awaitable[Response]]


def chunk_routes(shelf: ChunkShelf, wrap: Callable[[str, Handler], Handler]) -> list[Route]:
    """The routes above, each handler passed through `wrap(name, fn)` (the gateway's
    error mapping and counting)."""

    async def listing(request: Request) -> Response:
        models = [
            {
                "model_hash": m.model_hash,
                "model_id": m.card.model_id,
                "version": m.card.version,
                "file_size": m.card.file_size,
                "chunks": len(m.card.chunk_hashes),
            }
            for m in await shelf.models()
        ]
        return JSONResponse({"models": models}, headers={"cache-control": "no-cache"})

    async def card(request: Request) -> Response:
        stored = await shelf.model(request.path_params["model_hash"])
        return Response(stored.signed.model_dump_json(), media_type="application/json", headers=IMMUTABLE)

    async def chunk(request: Request) -> Response:
        data = await shelf.chunk(request.path_params["model_hash"], request.path_params["index"])
        return Response(data, media_type="application/octet-stream", headers=IMMUTABLE)

    return [
        Route(PREFIX, wrap("chunks_models", listing), methods=["GET"]),
        Route(f"{PREFIX}/{{model_hash}}/card", wrap("chunks_card", card), methods=["GET"]),
        Route(f"{PREFIX}/{{model_hash}}/{{index:int}}", wrap("chunks_chunk", chunk), methods=["GET"]),
    ]
