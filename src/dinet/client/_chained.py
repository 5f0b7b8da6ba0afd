"""Answering through a chain of pipeline stages (`dinet.client.chain`), under the request's options.

The chain is planned within the request's limits (only_peers, the price limit, the
policy; see `dinet.client.options`), max_tokens is capped to a deadline by the chain's
estimated time per token, and the request timeout covers the whole answer, repairs
included. The stages of the final chain earn a success; stages at fault were noted
as they were replaced.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

from dinet.client._records import Records
from dinet.client._strategy import Finished
from dinet.client.chain import ChainPlan, ChainResult, StageRules, plan_chain, run_chain
from dinet.client.network import Network
from dinet.client.options import AskOptions
from dinet.routing.shard import chain_token_budget
from dinet.wire.ids import PeerId
from dinet.wire.messages import GenerationParams, TokenFrame


class ChainOfStages:
    """The strategy for a model that only a chain of stages serves (or that was asked so)."""

    def __init__(
        self,
        network: Network,
        plan: ChainPlan,
        params: GenerationParams,
        rules: StageRules,
        records: Records,
        capped_to: int | None,
    ) -> None:
        self._network = network
        self._plan = plan
        self._params = params
        self._rules = rules
        self._records = records
        self._capped_to = capped_to

    @classmethod
    async def plan(
        cls,
        network: Network,
        params: GenerationParams,
        options: AskOptions,
        records: Records,
        on_attempt: Callable[[PeerId], None] | None = None,
    ) -> ChainOfStages:
        """Find stages and plan a chain within the options; NoCapablePeer if none will do."""
        rules = StageRules(
            options.policy, records.max_price, options.only_peers, options.draft, options.audit_stages
        )
        plan = await plan_chain(
            network, options.model_id, options.model_hash, timeout=options.discover_timeout_s, rules=rules
        )
        capped_to = None
        if options.deadline_s is not None:
            budget = chain_token_budget(plan.route, options.deadline_s)
            if budget < params.max_tokens:
                params = params.model_copy(update={"max_tokens": budget})
                capped_to = budget
        if on_attempt is not None:
            for peer_id in plan.route.peers:
                on_attempt(peer_id)
        return cls(network, plan, params, rules, records, capped_to)

    async def run(self, deadline: float) -> AsyncGenerator[TokenFrame | Finished, None]:
        result: ChainResult | None = None
        events = run_chain(
            self._network,
            self._plan,
            self._params,
            rules=self._rules,
            records=self._records,
            deadline=deadline,
        )
        async with aclosing(events):
            async for event in events:
                if isinstance(event, TokenFrame):
                    yield event
                else:
                    result = event
        assert result is not None, "run_chain ends with its result"
        await self._records.answered(result.chain)
        yield Finished(
            peer_id=result.chain[-1],
            model_id=result.model_id,
            model_hash=result.model_hash,
            usage=result.usage,
            finish_reason=result.finish_reason,
            peers_tried=result.peers_tried,
            params=self._params,
            max_tokens_capped=self._capped_to,
            chain=result.chain,
            stage_check=result.stage_check,
        )
