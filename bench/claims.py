"""Whether verification catches a peer that ignores what a request asks beyond its prompt:
its grammar (structured outputs), its sampling adjustments (penalties, bias, min-p), or
the truth of the log-probabilities it reports (issue 23's target: at least 99% of 200
verified requests caught per liar, no honest answer flagged).

Engine workers, no network: one honest worker and three liars (`ignore-grammar`,
`ignore-penalties`, `fake-logprobs`, see `dinet.engine.testing.liar`) answer, each on
1 llama.cpp thread; an honest verifier worker (2 threads) re-scores every answer on
its BF16 copy and `dinet.trust.verify.judge` decides, as `verify_answer` does over the
network. Each liar answers the `--requests` requests its lie concerns; the honest
worker answers all of them. A lie that changes no token (the model would have kept to
the grammar or the penalties anyway) cannot be caught and changes nothing: the table
counts those apart.

Prints a table, then one JSON line.

    DINET_ALLOW_LIARS=1 .venv/bin/python bench/claims.py [--requests 200] [--concurrency 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trio

from dinet.engine import WorkerEngine, default_model_path
from dinet.engine.testing.liar import ALLOW_ENV
from dinet.trust.verify import judge
from dinet.wire.messages import GenerationParams
from dinet.wire.verify import ScoreRequest, ScoresFrame

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "trust"))
from claim_cases import LIES, answer, requests  # noqa: E402


@dataclass
class Tally:
    total: int = 0
    flagged: int = 0
    same_as_honest: int = 0  # a lie that changed nothing (tokens and logprobs as the honest's)


async def campaign(n: int, concurrency: int) -> dict[str, Tally]:
    model = default_model_path()
    # The honest worker's answers are tallied by what they concern, beside each liar's.
    tallies = {role: Tally() for role in (*(f"honest/{c}" for c in LIES.values()), *LIES)}
    limiter = trio.CapacityLimiter(concurrency)
    with tempfile.TemporaryDirectory(prefix="dinet-claims-") as cache:
        engines = {"verifier": WorkerEngine(model, threads=2, score_cache=Path(cache))}
        engines["honest"] = WorkerEngine(model, threads=1)
        for lie in LIES:
            engines[lie] = WorkerEngine(model, threads=1, liar=lie)
        for engine in engines.values():
            await engine.__aenter__()
        try:

            async def one(liar: str, params: GenerationParams) -> None:
                async with limiter:
                    honest = await answer(engines["honest"], params)
                    lied = await answer(engines[liar], params)
                    for role, (tokens, logprobs) in ((f"honest/{LIES[liar]}", honest), (liar, lied)):
                        if not tokens:
                            verdict_ok = True
                        else:
                            scores = await engines["verifier"].score(
                                ScoreRequest(params=params, tokens=tuple(tokens))
                            )
                            assert isinstance(scores, ScoresFrame), scores
                            claimed = logprobs if params.logprobs is not None else None
                            verdict_ok = judge(
                                scores.positions,
                                temperature=params.temperature,
                                top_p=params.top_p,
                                seed=params.seed,
                                claimed_logprobs=claimed,
                            ).ok
                        tally = tallies[role]
                        tally.total += 1
                        tally.flagged += not verdict_ok
                    tallies[liar].same_as_honest += lied == honest

            async with trio.open_nursery() as nursery:
                for seed, (liar, concern) in enumerate(LIES.items()):
                    for params in requests(concern, n, seed):
                        nursery.start_soon(one, liar, params)
        finally:
            for engine in engines.values():
                await engine.__aexit__(None, None, None)
    return tallies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="per liar")
    parser.add_argument("--concurrency", type=int, default=3)
    args = parser.parse_args()
    os.environ[ALLOW_ENV] = "1"  # the liar workers refuse to start without it
    tallies = trio.run(campaign, args.requests, args.concurrency)
    header = f"{'role':<18}{'answers':>9}{'flagged':>9}{'rate':>9}"
    print(header + f"{'lie changed nothing':>21}{'caught of the rest':>20}")
    result: dict[str, object] = {}
    for role, t in tallies.items():
        changed = t.total - t.same_as_honest
        liar = not role.startswith("honest")
        caught_rest = (t.flagged / changed) if liar and changed else None
        rest = "" if caught_rest is None else f"{caught_rest:.1%}"
        print(f"{role:<18}{t.total:>9}{t.flagged:>9}{t.flagged / t.total:>9.1%}"
              f"{t.same_as_honest if liar else '':>21}{rest:>20}")  # fmt: skip
        result[role] = {"answers": t.total, "flagged": t.flagged, "same_as_honest": t.same_as_honest}
    print(json.dumps({"bench": "claims", "requests_per_liar": args.requests, **result}))


if __name__ == "__main__":
    main()
