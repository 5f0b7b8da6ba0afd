"""`din node --serve auto`: serve the candidate model whose demand most exceeds its supply.

The node follows the topics of all its candidates (`--auto-models`), where it hears their
servers' manifests (supply) and demand records (`dinet.node.demand`). Every
`auto_every_s` it asks `dinet.overlay.demand.choose_model` what to serve; when the answer
changes it pulls the model if its store lacks it and switches to it without dropping a
stream (`dinet.node.switching`), or to nothing: an idle node still joins and routes, like
`--no-model`. The core's dwell time, margin and idle timeout keep nodes from flapping.
A candidate whose file is larger than the disk or memory budget is never chosen.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from dinet.config import NodeSettings
from dinet.errors import ConfigError, DinetError, ModelNotFound
from dinet.models.card import verify_model_card
from dinet.models.catalog import resolve_model
from dinet.models.fetch import fetch_model_card, pull_model
from dinet.models.store import ModelStore, StoredModel
from dinet.node._serving import Serving
from dinet.node.demand import DemandDesk
from dinet.node.switching import OpenVersion, ServingSwitch, hold_version
from dinet.overlay.demand import Policy, choose_model
from dinet.p2p.identity import load_or_create_identity
from dinet.p2p.joining import Joiner
from dinet.wire.chunks import ModelCard
from dinet.wire.ids import CHUNKS_PROTOCOL, INFER_PROTOCOL, VERIFY_PROTOCOL, ModelHash

logger = logging.getLogger(__name__)

MB = 1 << 20
_HASH_CHARS = set("0123456789abcdef")


@dataclass
class Candidate:
    model_hash: ModelHash
    card: ModelCard | None  # None until a peer that holds the model has given its card


class AutoServer:
    """Decides, every period, which candidate to serve, and switches to it."""

    def __init__(
        self,
        switch: ServingSwitch,
        store: ModelStore,
        desk: DemandDesk,
        settings: NodeSettings,
        candidates: list[Candidate],
        rng: random.Random,
    ) -> None:
        self._switch = switch
        self._store = store
        self._desk = desk
        self._settings = settings
        self.candidates = candidates
        self._rng = rng
        self._policy = Policy(
            margin=settings.auto_margin,
            min_dwell_s=settings.auto_dwell_s,
            idle_after_s=settings.auto_idle_after_s,
        )
        self._serving_since = time.time()
        self._unservable: set[ModelHash] = set()  # models whose pull or engine failed
        self._said: tuple[ModelHash | None, str] | None = None

    async def run(self, joiner: Joiner) -> None:
        names = ", ".join(c.model_hash[:16] for c in self.candidates)
        logger.info(
            "serving automatically: candidates %s, a decision every %ss", names, self._settings.auto_every_s
        )
        while True:
            await trio.sleep(self._settings.auto_every_s)
            await self.decide(joiner)

    def fits(self, candidate: Candidate) -> bool:
        """Known, within both budgets, and not found unservable."""
        if candidate.card is None or candidate.model_hash in self._unservable:
            return False
        return within_budget(candidate.card.file_size, self._settings)

    async def decide(self, joiner: Joiner) -> None:
        await self._learn_cards(joiner)
        now = time.time()
        book = self._desk.book
        for candidate in self.candidates:  # supply by name, from the manifests heard
            for manifest in joiner.directory.serving(None, candidate.model_hash, now):
                book.serving(manifest.peer_id, {o.model_hash for o in manifest.models}, now)
        book.expire(now)
        current = self._switch.model_hash
        choice = choose_model(
            book,
            now,
            me=self._desk.peer_id,
            current=current,
            serving_since=self._serving_since,
            candidates=[c.model_hash for c in self.candidates if self.fits(c)],
            rng=self._rng,
            policy=self._policy,
        )
        if (choice.model, choice.reason) != self._said:
            logger.info("auto: serve %s: %s", _short(choice.model), choice.reason)
            self._said = (choice.model, choice.reason)
        if choice.model == current:
            return
        if choice.model is not None and not await self._pulled(joiner, choice.model):
            return
        try:
            switched = await self._switch.switch_to(choice.model)
        except DinetError as exc:
            logger.error("auto: cannot serve %s: %s", _short(choice.model), exc)
            switched = False
        if switched:
            self._serving_since = time.time()
            logger.info("auto: now serving %s (was %s)", _short(choice.model), _short(current))
        elif choice.model is not None:
            self._unservable.add(choice.model)

    async def _pulled(self, joiner: Joiner, model_hash: ModelHash) -> bool:
        """Whether `model_hash` is complete in the store, pulling it first if need be."""
        stored = await trio.to_thread.run_sync(self._store.get, model_hash)
        if stored is not None and stored.complete:
            return True
        logger.info("auto: pulling %s", model_hash[:16])
        try:
            report = await pull_model(joiner.host, self._store, model_hash, await joiner.holders(model_hash))
        except DinetError as exc:  # nobody reachable holds it now: a later decision retries
            logger.warning("auto: pull of %s failed, will retry: %s", model_hash[:16], exc)
            return False
        logger.info(
            "auto: pulled %s: %d chunks fetched, %d reused",
            model_hash[:16],
            report.fetched_chunks,
            report.reused_chunks,
        )
        return True

    async def _learn_cards(self, joiner: Joiner) -> None:
        """The card (so the size) of each candidate known by hash alone, from a holder."""
        for candidate in self.candidates:
            if candidate.card is not None:
                continue
            try:
                holders = await joiner.holders(candidate.model_hash)
                signed = await fetch_model_card(joiner.host, holders, candidate.model_hash)
            except DinetError as exc:
                logger.debug("no card for %s yet: %s", candidate.model_hash[:16], exc)
                continue
            candidate.card = verify_model_card(signed, candidate.model_hash)
            logger.info(
                "auto: candidate %s is %s (%.0f MB)",
                candidate.model_hash[:16],
                candidate.card.model_id,
                candidate.card.file_size / MB,
            )


def within_budget(file_size: int, settings: NodeSettings) -> bool:
    """Whether a model file of `file_size` bytes fits both budgets (on disk, and in memory:
    llama.cpp maps the whole file)."""
    budgets = (settings.auto_disk_mb, settings.auto_memory_mb)
    return all(budget is None or file_size / MB <= budget for budget in budgets)


def _short(model_hash: ModelHash | None) -> str:
    return "nothing" if model_hash is None else model_hash[:16]


def find_candidates(settings: NodeSettings) -> list[Candidate]:
    """The models `--auto-models` names: stored ones by hash, hash prefix or id; a known id
    or a .gguf path imported into the store; a full hash the store lacks, to be pulled if
    chosen (its size learnt from a holder's card). Blocking: run in a thread."""
    store = ModelStore(settings.home)
    found: dict[ModelHash, Candidate] = {}
    for name in settings.auto_models:
        stored: StoredModel | None = None
        try:
            stored = store.find(name)
        except ModelNotFound:
            if len(name) == 64 and set(name) <= _HASH_CHARS:
                found.setdefault(ModelHash(name), Candidate(ModelHash(name), None))
                continue
            try:
                model = resolve_model(name)
            except ModelNotFound as exc:
                raise ConfigError(f"--auto-models: {exc}") from None
            key = load_or_create_identity(settings.home)
            stored = store.import_file(model.path, key, model_id=model.model_id)
        found[stored.model_hash] = Candidate(stored.model_hash, stored.card)
    return list(found.values())


@asynccontextmanager
async def serving_auto(
    settings: NodeSettings, open_version: OpenVersion, desk: DemandDesk
) -> AsyncIterator[Serving]:
    """The node's Serving with `--serve auto`: nothing at first, then whatever
    `AutoServer` chooses. `open_version(None)` must serve nothing."""
    candidates = await trio.to_thread.run_sync(find_candidates, settings)
    desk.watched.update(c.model_hash for c in candidates)
    async with trio.open_nursery() as versions:
        first = await versions.start(hold_version, open_version, None)
        switch = ServingSwitch(
            versions, open_version, first, protocols=(INFER_PROTOCOL, VERIFY_PROTOCOL, CHUNKS_PROTOCOL)
        )
        auto = AutoServer(switch, ModelStore(settings.home), desk, settings, candidates, random.Random())
        switch.serving.background.append(auto.run)
        try:
            yield switch.serving
        finally:
            versions.cancel_scope.cancel()
