"""What a node serves: the whole model on /dinet/infer/1, a layer range on /dinet/shard/1,
or nothing at all (`--no-model`); several whole models at once are `dinet.node._together`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from dinet.config import NodeSettings
from dinet.engine import WorkerEngine
from dinet.engine.testing.liar import parse_lie
from dinet.engine.torch._stage import Stage, check_same_vocabulary
from dinet.engine.torch.stage_process import StageProcess
from dinet.errors import ConfigError, EngineUnavailable, ModelError
from dinet.ledger import Ledger
from dinet.models.catalog import LocalModel
from dinet.node.admission import Admission
from dinet.node.inference import Engine, InferenceService
from dinet.node.limits import PeerLimiter, RequestBounds
from dinet.node.manifests import load_of, offer
from dinet.node.probation import ClientProbation
from dinet.node.receipts import Accountant
from dinet.node.shard import ShardService
from dinet.node.verification import VerifyService
from dinet.p2p.host import PeerHost
from dinet.p2p.joining import Joiner
from dinet.p2p.streams import Handler
from dinet.wire.ids import INFER_PROTOCOL, SHARD_PROTOCOL, VERIFY_PROTOCOL, ModelHash, PeerId
from dinet.wire.manifest import ModelOffer

logger = logging.getLogger(__name__)


@dataclass
class Serving:
    model_id: str | None  # the model served; None for a node that serves none
    model_hash: ModelHash | None
    handlers: dict[str, Handler]  # protocol id -> stream handler
    offer: ModelOffer | None  # None: the engine could not start, or no model
    figures: Callable[[], dict[str, object]]  # live manifest fields: speed and load
    available: Callable[[], bool]  # False once the engine has given up
    state: Callable[[], dict[str, object] | None]  # the engine, for `din node --json` and the node file
    busy: Callable[[], bool]  # computing for someone now: chores wait (`dinet.node.chores`)
    # Tasks that run as long as the node, given its joiner (to find peers that hold the model).
    background: list[Callable[[Joiner], Awaitable[None]]] = field(default_factory=list)
    # The models served beside this one (`--also-serve`, `dinet.node._together`): their
    # offers go into the manifest next to its own.
    also: list[Serving] = field(default_factory=list)

    def offers(self) -> tuple[ModelOffer, ...]:
        """The offers of the manifest: each model served whose engine is available."""
        return tuple(s.offer for s in (self, *self.also) if s.offer is not None and s.available())


@dataclass(frozen=True)
class Shared:
    """What the whole models of one node share (`--also-serve`, `dinet.node._together`): its
    generation slots and queue, and each client's standing for probation. Their per-peer
    limits are held once, before a stream reaches the model it names."""

    admission: Admission
    probation: ClientProbation


def shared_by_models(settings: NodeSettings, ledger: Ledger, peer_id: PeerId) -> Shared:
    return Shared(
        Admission(settings.max_concurrent, settings.max_queue), _probation(settings, ledger, peer_id)
    )


def parse_layers(text: str, n_layers: int) -> tuple[int, int]:
    """'START:STOP' as a block range of a model with `n_layers` blocks, or ConfigError."""
    start_text, _, stop_text = text.partition(":")
    try:
        start, stop = int(start_text), int(stop_text)
    except ValueError:
        raise ConfigError(f"--layers takes START:STOP, not {text!r}") from None
    if not 0 <= start < stop <= n_layers:
        raise ConfigError(f"--layers {text}: the model has blocks 0 to {n_layers} (STOP is exclusive)")
    return start, stop


@asynccontextmanager
async def whole_model(
    settings: NodeSettings,
    model: LocalModel,
    model_hash: ModelHash,
    accountant: Accountant,
    on_request: Callable[[bool], None] = lambda busy: None,
    shared: Shared | None = None,
    log_name: str = "worker.log",
) -> AsyncIterator[Serving]:
    """`shared`: what a node's several models share (`dinet.node._together`)."""
    from dinet.models._gguf import read_layout

    engine = WorkerEngine(
        model.path,
        threads=settings.threads,
        memory_mb=settings.memory_mb,
        slots=settings.max_concurrent,  # decoded together in one batch (`engine.llama._slots`)
        prefix_cache_mb=settings.prefix_cache_mb,
        log_path=settings.home / log_name,
        sandbox=settings.sandbox,
        preflight=read_layout,  # the GGUF header checks, again before every worker start
        max_restarts=settings.engine_restarts,
        restart_backoff_s=settings.engine_backoff_s,
        liar=settings.liar,
        score_cache=settings.home / "scoring",
    )
    async with _engine_started(engine):
        inference = _inference(settings, engine, model.model_id, model_hash, accountant, on_request, shared)
        verifier = VerifyService(
            engine,
            inference.admission,
            model_hash,
            limiter=inference.limiter,
            bounds=RequestBounds(settings.max_tokens_limit, settings.max_prompt_chars),
            max_request_bytes=settings.max_request_bytes,
            covers=settings.liar is not None and parse_lie(settings.liar).covers,
        )

        model_offer = None
        if engine.available:
            info = engine.info
            model_offer = offer(
                model.model_id, model_hash, info.quantization, info.n_ctx, info.n_layers, tools=info.tools
            )
        yield Serving(
            model.model_id,
            model_hash,
            {INFER_PROTOCOL: inference.handle, VERIFY_PROTOCOL: verifier.handle},
            model_offer,
            lambda: _figures(inference),
            available=lambda: engine.available,
            state=lambda: engine_state(engine),
            busy=lambda: inference.admission.active > 0,
        )


def _inference(
    settings: NodeSettings,
    engine: Engine,
    model_id: str,
    model_hash: ModelHash,
    accountant: Accountant,
    on_request: Callable[[bool], None],
    shared: Shared | None = None,
) -> InferenceService:
    """The /dinet/infer/1 handler of `engine`, within the node's limits (with `shared`,
    those of several models, whose per-peer limits are held before dispatch)."""
    return InferenceService(
        engine,
        Admission(settings.max_concurrent, settings.max_queue) if shared is None else shared.admission,
        model_id,
        model_hash,
        accountant,
        limiter=None if shared is not None else peer_limiter(settings),
        bounds=RequestBounds(settings.max_tokens_limit, settings.max_prompt_chars),
        max_request_bytes=settings.max_request_bytes,
        on_request=on_request,
        probation=(
            _probation(settings, accountant.ledger, accountant.peer_id)
            if shared is None
            else shared.probation
        ),
    )


def _probation(settings: NodeSettings, ledger: Ledger, peer_id: PeerId) -> ClientProbation:
    return ClientProbation.from_ledger(
        ledger, peer_id, receipts_needed=settings.probation_receipts, max_tokens=settings.probation_max_tokens
    )


def peer_limiter(settings: NodeSettings) -> PeerLimiter:
    """What one peer may ask of the node's generation protocols: rate, burst, streams at once."""
    return PeerLimiter(settings.per_peer_rate, settings.per_peer_burst, settings.per_peer_concurrency)


def _figures(inference: InferenceService) -> dict[str, object]:
    """The manifest's live fields of a whole-model node: speed and load."""
    admission = inference.admission
    return {
        "tokens_per_s": round(inference.stats.tokens_per_s, 2),
        "ttft_ms": round(inference.stats.ttft_ms, 2),
        "load": load_of(admission.active, admission.queued),
    }


@asynccontextmanager
async def fake_model(
    settings: NodeSettings, accountant: Accountant, on_request: Callable[[ModelHash, bool], None]
) -> AsyncIterator[Serving]:
    """BENCHMARKS ONLY (`fake_engine`): a FAKE model served by the real inference handler,
    so that many nodes fit on one machine (`dinet.engine.testing.fake`). It is announced
    in the DHT like a real model, so discovery finds it the same way."""
    from dinet.engine.testing.fake import (
        FAKE_CONTEXT,
        FAKE_LAYERS,
        FAKE_MODEL_HASH,
        FAKE_MODEL_ID,
        FAKE_QUANTIZATION,
        FakeEngine,
    )

    logger.warning(
        "THIS NODE SERVES A FAKE MODEL (%s, %s): for benchmarks only, its answers are echoes",
        FAKE_MODEL_ID,
        FAKE_MODEL_HASH,
    )
    inference = _inference(
        settings,
        FakeEngine(),
        FAKE_MODEL_ID,
        FAKE_MODEL_HASH,
        accountant,
        lambda busy: on_request(FAKE_MODEL_HASH, busy),
    )
    yield Serving(
        FAKE_MODEL_ID,
        FAKE_MODEL_HASH,
        {INFER_PROTOCOL: inference.handle},
        offer(FAKE_MODEL_ID, FAKE_MODEL_HASH, FAKE_QUANTIZATION, FAKE_CONTEXT, FAKE_LAYERS),
        lambda: _figures(inference),
        available=lambda: True,
        state=lambda: {"serving": True, "error": None, "restarts": 0, "sandbox": None, "fake": True},
        busy=lambda: inference.admission.active > 0,
        background=findable(FAKE_MODEL_HASH, FAKE_MODEL_ID),
    )


def findable(model_hash: ModelHash, model_id: str | None) -> list[Callable[[Joiner], Awaitable[None]]]:
    """The tasks that make a served model findable: its provider records (by hash and by
    id) and the neighbours its gossip topic runs over."""
    return [
        lambda joiner: joiner.keep_providing(model_hash, model_id),
        lambda joiner: joiner.keep_neighbours(model_hash),
    ]


@asynccontextmanager
async def model_stage(
    settings: NodeSettings, model: LocalModel, model_hash: ModelHash, host: PeerHost
) -> AsyncIterator[Serving]:
    from dinet.engine.torch._compute_thread import ComputeThread
    from dinet.models._gguf import read_layout
    from dinet.models.card import summarize

    assert settings.layers is not None
    summary = summarize(await trio.to_thread.run_sync(read_layout, model.path))
    span = parse_layers(settings.layers, summary.layers)
    draft = settings.draft_model if span[0] == 0 else None  # only a first stage guesses
    if draft is not None:
        await trio.to_thread.run_sync(check_same_vocabulary, model.path, draft)
    compute = ComputeThread(f"dinet-stage-{span[0]}:{span[1]}")
    try:
        lie = parse_lie(settings.liar) if settings.liar is not None else None
        stage: Stage | StageProcess
        if settings.sandbox:  # torch on strangers' hidden states: in the sandboxed worker
            worker = StageProcess(
                model.path,
                span[0],
                span[1],
                threads=settings.threads,
                lie=lie,
                sandbox=True,
                log_path=settings.home / "stage-worker.log",
                draft=draft,
            )
            stage = await compute.run(worker.start)
        else:
            stage = await compute.run(
                lambda: Stage.load(model.path, *span, threads=settings.threads, lie=lie, draft=draft)
            )
        service = ShardService(
            stage,
            compute,
            model_hash,
            span,
            host,
            max_kv_bytes=int(settings.shard_kv_mb * 2**20),
            idle_s=settings.shard_idle_s,
        )

        def figures() -> dict[str, object]:
            return {
                "tokens_per_s": round(service.stats.tokens_per_s, 2),
                "ttft_ms": 0.0,
                "load": load_of(service.active, 0),
            }

        yield Serving(
            model.model_id,
            model_hash,
            {SHARD_PROTOCOL: service.handle},
            offer(model.model_id, model_hash, summary.quantization, stage.model.n_ctx, summary.layers, span),
            figures,
            available=lambda: True,
            busy=service.busy,
            state=lambda: _stage_state(stage),
            background=[lambda _: service.run()],
        )
    finally:
        if isinstance(stage, StageProcess):
            await compute.run(stage.close)
        compute.close()


def _stage_state(stage: Stage | StageProcess) -> dict[str, object]:
    """What `din node --json` says of a stage's engine; torch run in the node's own thread
    (`--no-sandbox`) has no worker, so no sandbox either."""
    if not isinstance(stage, StageProcess):
        return {"serving": True, "error": None, "restarts": 0, "sandbox": None}
    status = stage.sandbox_status
    sandbox = status.model_dump(mode="json") if status is not None else None
    return {"serving": True, "error": None, "restarts": stage.restarts, "sandbox": sandbox}


@asynccontextmanager
async def no_engine() -> AsyncIterator[Serving]:
    """A node that serves no model (`--no-model`): no engine, no protocol of its own, an
    offer of nothing (so no client sends it a request) and no model bytes. What every node
    does besides serving (joining, routing, the DHT, passing manifests on) it still does."""
    yield Serving(
        None,
        None,
        {},
        None,
        lambda: {"tokens_per_s": 0.0, "ttft_ms": 0.0, "load": load_of(0, 0)},
        available=lambda: False,
        state=lambda: None,
        busy=lambda: False,
    )


@asynccontextmanager
async def _engine_started(engine: WorkerEngine) -> AsyncIterator[None]:
    """The engine, started if it can be; a model that cannot be served leaves the node
    up (reachable, sharing chunks, saying why in its node file), not crash-looping."""
    try:
        await engine.start()
    except (EngineUnavailable, ModelError) as exc:
        logger.error("the model cannot be served, the node runs without it: %s", exc)
    try:
        yield
    finally:
        await engine.aclose()


def engine_state(engine: WorkerEngine) -> dict[str, object]:
    """For `din node --json` and the node file: is the model served, and how confined."""
    status = engine.sandbox_status
    return {
        "serving": engine.available,
        "error": engine.failed,
        "restarts": engine.restarts,
        "sandbox": status.model_dump(mode="json") if status is not None else None,
    }
