"""How to ask: one frozen value that both ways of answering (a whole-model peer, a chain of
pipeline stages) honour, or refuse with a typed error.

    options = AskOptions.from_settings(settings, model_id="smollm2-135m-instruct", deadline_s=2.0)
    async for event in ask(network, params, options): ...

What each option means on a chain of stages:

- `policy`: "latency" and "throughput" both take the chain with the shortest time per
  token (for a ring of stages that is the same thing); "cost" the cheapest chain by
  the stages' advertised prices, then the fastest.
- `max_price`: the sum of the stages' advertised prices (completion, and prompt) must
  stay within it; a chain above it is never used, and NoCapablePeer says so.
- `deadline_s`: max_tokens is capped to what the chain's estimated time per token allows
  (on whole-model peers the deadline also travels to the node: see `dinet.client._whole`).
- `region`: not used (a chain is chosen by time per token, which already holds its hops).
- `only_peers`: no stage outside it is used.
- `probation_good`: each stage counts as a producer (one on probation: two verifiers).
- `verify_rate`, `verifiers`: the chain's answer is re-scored by a whole-model peer of the
  same model hash; `Answer.verification.verified` is None when no such peer exists.
- `request_timeout_s`: the whole answer, chain repairs included; AnswerTimedOut after it.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, fields, replace
from typing import Any, get_args

from dinet.config import ClientSettings
from dinet.errors import RequestError
from dinet.routing.select import Policy
from dinet.trust.reputation import PROBATION_GOOD
from dinet.wire.ids import ModelHash, PeerId
from dinet.wire.messages import MAX_DEADLINE_MS
from dinet.wire.shard import Draft

MAX_REGION_CHARS = 64  # as a manifest's region

POLICIES: tuple[str, ...] = get_args(Policy)
DRAFTS: tuple[str, ...] = get_args(Draft)


@dataclass(frozen=True)
class AskOptions:
    """Everything about one request except what to generate (`GenerationParams`)."""

    model_id: str | None = None
    model_hash: ModelHash | None = None
    # True: through a chain of pipeline stages; False: whole-model peers only; None: a
    # chain only when no peer serves the whole model.
    sharded: bool | None = None
    # How a chain guesses tokens to check several in one trip round its stages: "lookup"
    # (n-grams of the prompt and the answer so far), "model" (the first stage's draft
    # model, `din node --draft-model`) or "none". The answer is the same.
    draft: Draft = "none"
    # Share of chain answers whose stages are audited: each replayed on another holder of
    # its blocks (1: every answer). Receipts are checked on every chain answer regardless.
    audit_stages: float = 0.0
    policy: Policy = "latency"
    max_price: float | None = None  # credits per token; None: the network's own limit, if any
    # Answer within this time: peers that can come first, max_tokens is capped to what the
    # chosen one can produce in it, and a node that cannot meet it refuses at once.
    deadline_s: float | None = None
    only_peers: frozenset[PeerId] | None = None  # ask no other peer (nor stage)
    verify_rate: float = 0.0  # fraction of answers re-scored by another peer (1: all)
    verifiers: frozenset[PeerId] | None = None  # re-scoring only by these peers
    # Good evidence a peer needs before its answers are checked only at verify_rate; until
    # then every answer is, by two verifiers (0: no probation). See trust.reputation.has_standing.
    probation_good: float = PROBATION_GOOD
    discover_timeout_s: float = 10.0  # how long to look for peers before giving up
    request_timeout_s: float = 120.0  # the whole answer, after discovery
    region: str = ""  # ours: peers of another region rank a little lower ("": no preference)

    def __post_init__(self) -> None:
        for name in ("only_peers", "verifiers"):  # any collection in, a frozenset kept
            value = getattr(self, name)
            if value is not None and not isinstance(value, frozenset):
                if isinstance(value, str) or not isinstance(value, Collection):
                    raise RequestError(f"{name} must be a collection of peer ids", name)
                object.__setattr__(self, name, frozenset(value))
        if not (self.sharded is None or isinstance(self.sharded, bool)):
            raise RequestError("sharded must be True, False or None", "sharded")
        if self.draft not in DRAFTS:
            raise RequestError(f"unknown draft {self.draft!r}: use {', '.join(DRAFTS)}", "draft")
        if self.policy not in POLICIES:
            raise RequestError(f"unknown policy {self.policy!r}: use {', '.join(POLICIES)}", "policy")
        if self.max_price is not None and not _number(self.max_price, at_least=0.0):
            raise RequestError("max_price must be a number of credits, 0 or more", "max_price")
        for name in ("verify_rate", "audit_stages"):
            value = getattr(self, name)
            if not _number(value, at_least=0.0) or value > 1.0:
                raise RequestError(f"{name} must be between 0 and 1", name)
        if not _number(self.probation_good, at_least=0.0):
            raise RequestError("probation_good must be a number, 0 or more", "probation_good")
        for name in ("deadline_s", "discover_timeout_s", "request_timeout_s"):
            value = getattr(self, name)
            if (value is not None or name != "deadline_s") and not _number(value, above=0.0):
                raise RequestError(f"{name} must be a number of seconds above 0", name)
        if self.deadline_s is not None and self.deadline_s * 1000 > MAX_DEADLINE_MS:
            raise RequestError(f"deadline_s must be at most {MAX_DEADLINE_MS // 1000} s", "deadline_s")
        if not isinstance(self.region, str) or len(self.region) > MAX_REGION_CHARS:
            raise RequestError(f"region must be text of at most {MAX_REGION_CHARS} characters", "region")
        if self.only_peers is not None and not self.only_peers:
            raise RequestError("only_peers is empty: no peer could be asked", "only_peers")

    @classmethod
    def from_settings(cls, settings: ClientSettings, **request: Any) -> AskOptions:
        """The client's settings (limits, timeouts, verification), overridden by `request`."""
        base = cls(
            max_price=settings.max_price,
            verify_rate=settings.verify_rate,
            probation_good=settings.probation_good,
            discover_timeout_s=settings.discover_timeout_s,
            request_timeout_s=settings.request_timeout_s,
            region=settings.region,
        )
        return base.with_(**request)

    def with_(self, **changes: Any) -> AskOptions:
        """A copy with `changes`; RequestError names an option that does not exist."""
        known = {f.name for f in fields(self)}
        for name in changes:
            if name not in known:
                raise RequestError(f"unknown option {name!r}", name)
        return replace(self, **changes)


def _number(value: object, *, at_least: float | None = None, above: float | None = None) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    return (at_least is None or value >= at_least) and (above is None or value > above)
