"""Re-scoring in the worker: one prefill gives every claimed token's scores."""

from __future__ import annotations

from pathlib import Path

from tests.engine._engine_helpers import chat, collect

from dinet.engine import WorkerEngine
from dinet.trust.verify import judge
from dinet.wire.messages import ErrorFrame
from dinet.wire.verify import ScoreRequest, ScoresFrame


async def test_an_honest_answer_scores_as_its_own_choices(model_path: Path, tmp_path: Path) -> None:
    greedy = chat("Tell me about clocks.", max_tokens=16)
    sampled = chat("Tell me about clocks.", max_tokens=16, temperature=0.9, top_p=0.95, seed=3)
    ranks: dict[float, list[int]] = {}
    async with WorkerEngine(model_path, threads=1, score_cache=tmp_path) as engine:
        for params in (greedy, sampled):
            run = await collect(engine, params)
            scores = await engine.score(ScoreRequest(params=params, tokens=tuple(run.tokens)))
            assert isinstance(scores, ScoresFrame)
            assert [p.token_id for p in scores.positions] == run.tokens
            assert scores.prompt_tokens == run.end.usage.prompt_tokens
            verdict = judge(
                scores.positions, temperature=params.temperature, top_p=params.top_p, seed=params.seed
            )
            assert verdict.ok, verdict
            ranks[params.temperature] = [p.rank for p in scores.positions]
        # Greedy tokens are the verifier's top ones, but for a rare near-tie that noise swaps.
        assert sum(rank == 0 for rank in ranks[0.0]) >= len(ranks[0.0]) - 2 > 0
        # A bad claim is refused and the worker keeps serving.
        refused = await engine.score(ScoreRequest(params=greedy, tokens=(1, 10**7)))
        assert isinstance(refused, ErrorFrame) and refused.code == "bad_request"
        again = await collect(engine, greedy)
        assert again.tokens == (await collect(engine, greedy)).tokens
    assert list(tmp_path.glob("score-bf16-*.gguf"))  # it scored on the BF16 copy
