"""Asking the network: one request path for every way of answering.

    async for event in ask(network, params, AskOptions(model_id="smollm2-135m-instruct")):
        ...  # TokenFrame as each token arrives, then one Answer

`ask` picks a strategy (`_whole.WholeModel`: one whole-model peer at a time, with
failover; `_chained.ChainOfStages`: a chain of pipeline stages, with repairs), streams
its tokens, has a sampled fraction of answers re-scored by another peer (every answer of a
peer on probation, by two), and builds the Answer. Every option holds for both strategies
(`dinet.client.options`); what the request leaves behind (receipts, reputation,
verification outcomes) is written by its `Records`.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass

import trio

from dinet.client._chained import ChainOfStages
from dinet.client._records import Records
from dinet.client._strategy import Finished, Strategy
from dinet.client._whole import WholeModel
from dinet.client.network import Network
from dinet.client.options import AskOptions
from dinet.client.stage_audit import StageCheck
from dinet.client.verify import Verification, verify_answer
from dinet.errors import RequestError
from dinet.trust.reputation import has_standing
from dinet.wire.ids import ModelHash, PeerId, RequestId
from dinet.wire.messages import CountersignedReceipt, GenerationParams, TokenFrame, TokenLogprobs, Usage

PROBATION_VERIFIERS = 2  # independent verifiers of an answer from a peer on probation


@dataclass(frozen=True)
class Answer:
    text: str
    peer_id: PeerId  # the peer that sent the last token (a chain's last stage)
    model_id: str
    model_hash: ModelHash
    usage: Usage
    finish_reason: str
    ttft_ms: float
    tokens_per_s: float
    peers_tried: tuple[PeerId, ...]
    max_tokens_capped: int | None = None  # set when a deadline lowered max_tokens
    # Countersigned and kept in the ledger. Whole-model peers only: stages sign no payment receipts yet.
    receipts: tuple[CountersignedReceipt, ...] = ()
    refused_receipts: tuple[str, ...] = ()  # why a peer's receipt was refused
    chain: tuple[PeerId, ...] = ()  # pipeline stages that answered, in order (empty: one whole node)
    token_ids: tuple[int, ...] = ()  # the completion's tokens, as the peers claimed them
    # Per token, when the request asked for log-probabilities (`GenerationParams.logprobs`).
    logprobs: tuple[TokenLogprobs | None, ...] = ()
    verification: Verification | None = None  # set when the answer was checked by another peer
    stage_check: StageCheck | None = None  # a chain's: its stages' receipts and audits


async def ask(
    network: Network,
    params: GenerationParams,
    options: AskOptions | None = None,
    *,
    on_attempt: Callable[[PeerId], None] | None = None,
) -> AsyncGenerator[TokenFrame | Answer, None]:
    """Yield each token as it arrives, then one Answer.

    `on_attempt` is told each peer id as it is asked (every stage of a chain). Errors:
    NoCapablePeer when no peer (or chain) can take the request within its options,
    DeadlineUnmet when the peers left refused its deadline, AnswerTimedOut after
    `options.request_timeout_s`, RemoteError for a refusal that another peer would
    repeat (a bad request), RequestError naming `tools` for a request that uses tools
    when no peer serving the model declares tool support (only those are asked).

    A fraction `options.verify_rate` of answers is re-scored by another peer serving
    the same model hash before the Answer is yielded; the outcome is in
    `Answer.verification` (`verified` is None when no peer could check it). An answer
    from a peer on probation (without standing in this client's reputation book, see
    `dinet.trust.reputation.has_standing`) is always checked, by two verifiers.
    """
    options = AskOptions() if options is None else options
    asked_at = trio.current_time()  # a deadline counts from here, discovery included
    max_price = options.max_price if options.max_price is not None else network.max_price
    records = Records(network, RequestId(uuid.uuid4().hex), max_price)
    strategy = await _strategy(network, params, options, records, on_attempt, asked_at)
    started = time.perf_counter()
    first_at: float | None = None
    tokens: list[TokenFrame] = []
    finished: Finished | None = None
    # A deadline, not a cancel scope: a scope must not span this generator's yields.
    deadline = trio.current_time() + options.request_timeout_s
    async with aclosing(strategy.run(deadline)) as events:
        async for event in events:
            if isinstance(event, Finished):
                finished = event
                continue
            first_at = first_at or time.perf_counter()
            tokens.append(event)
            yield event
    assert finished is not None, "a strategy ends with Finished"
    decode_s = time.perf_counter() - (first_at or started)
    token_ids = tuple(t.token_id for t in tokens)
    logprobs = tuple(t.logprobs for t in tokens) if finished.params.logprobs is not None else ()
    verification = None
    probation = on_probation(network, records.producers, options.probation_good)
    if probation or (options.verify_rate > 0 and random.random() < options.verify_rate):
        verification = await verify_answer(
            network,
            finished.params,
            list(token_ids),
            finished.model_hash,
            exclude=records.producers,
            verifiers=options.verifiers,
            claimed_logprobs=[None if lp is None else lp.logprob for lp in logprobs] if logprobs else None,
            independent=PROBATION_VERIFIERS if probation else 1,
        )
        await records.verified(verification, len(tokens), finished.model_hash)
    yield Answer(
        text="".join(t.text for t in tokens),
        peer_id=finished.peer_id,
        model_id=finished.model_id,
        model_hash=finished.model_hash,
        usage=finished.usage,
        finish_reason=finished.finish_reason,
        ttft_ms=((first_at or time.perf_counter()) - started) * 1e3,
        tokens_per_s=(len(tokens) - 1) / decode_s if len(tokens) > 1 and decode_s > 0 else 0.0,
        peers_tried=finished.peers_tried,
        max_tokens_capped=finished.max_tokens_capped,
        receipts=tuple(records.receipts),
        refused_receipts=tuple(records.refused),
        chain=finished.chain,
        token_ids=token_ids,
        logprobs=logprobs,
        verification=verification,
        stage_check=finished.stage_check,
    )


def on_probation(network: Network, producers: Iterable[PeerId], good_needed: float) -> bool:
    """Whether any of the peers that produced an answer lacks standing with this client."""
    book = network.reputation
    if good_needed <= 0 or book is None:
        return False
    return any(not has_standing(book.standing(p), good_needed) for p in producers)


async def _strategy(
    network: Network,
    params: GenerationParams,
    options: AskOptions,
    records: Records,
    on_attempt: Callable[[PeerId], None] | None,
    asked_at: float,
) -> Strategy:
    """Whole-model peers, unless asked for a chain or only stages serve the model. A request
    that uses tools goes to whole-model peers whose offer declares tool support only (the
    layer-range engine of a chain's stages renders no tools)."""
    tools = params.uses_tools
    if tools and options.sharded:
        raise RequestError(
            "tools: a chain of pipeline stages renders no tools yet: ask whole-model peers", "tools"
        )
    if options.sharded is not True:
        whole = await network.discover(
            options.model_id,
            options.model_hash,
            timeout=options.discover_timeout_s,
            or_stages=options.sharded is None and not tools,
            tools=tools,
        )
        if whole or options.sharded is False:
            return WholeModel(network, params, options, records, on_attempt, asked_at)
    return await ChainOfStages.plan(network, params, options, records, on_attempt)
