"""Whether audits catch lying pipeline stages, and what checking a chain costs.

The mesh of tests/client/test_stage_liars.py, with every lie: the model split in two
halves (blocks 0-15, 15-30), two honest stages per half, and liars: `stage-noise` and
`stage-late` on each half, `stage-forge` on the back half (nine `din node --layers`
processes on loopback). `--chains` answers, each through a random front and back stage
(so a chain holds no liar, one or two), half of them with prompt-lookup drafts, every
one audited (audit rate 1): receipts checked, each stage replayed on up to three other
holders of its half (liars among them) until one agrees or two part from it alike.

Per lie and position: stages audited, caught. Honest stages: audited, flagged. The
check's cost: the time from an answer's last token to its stages checked, against the
answer's own time (medians).

Prints a table, then one JSON line.

    .venv/bin/python bench/stage_liars.py [--chains 200] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.client.stage_liar_mesh import ROLES, audited_answer, case_params, stage_liar_mesh  # noqa: E402

from dinet.client.network import open_network  # noqa: E402
from dinet.config import ClientSettings  # noqa: E402


async def campaign(nodes: dict, home: Path, chains: int, seed: int) -> dict:
    rng = random.Random(seed)
    fronts = [r for r, (half, _) in ROLES.items() if half == "front"]
    backs = [r for r, (half, _) in ROLES.items() if half == "back"]
    used, caught = Counter[str](), Counter[str]()
    answer_s, check_s, undone = [], [], Counter[str]()
    settings = ClientSettings(home=home, bootstrap=[nodes[fronts[0]].addr], mdns=False, discover_timeout_s=30)
    async with open_network(settings) as network:
        wanted = {n.peer_id for n in nodes.values()}
        with trio.fail_after(120):
            while not wanted <= {s.peer_id for _, s in network.stage_offers(None, None)}:
                await network.look()
                await trio.sleep(0.3)
        network.reputation = None  # every liar stays an auditor: the campaign must not learn who lies
        for i in range(chains):
            front, back = rng.choice(fronts), rng.choice(backs)
            draft = "lookup" if rng.random() < 0.5 else "none"
            outcome = await audited_answer(network, nodes, front, back, case_params(rng), draft)
            used.update((front, back))
            caught.update(outcome.caught())
            undone.update(p.split(":")[0] for p in outcome.check.problems if "was not done" in p)
            answer_s.append(outcome.answer_s)
            check_s.append(outcome.check_s)
            if (i + 1) % 20 == 0:
                print(f"  {i + 1}/{chains} chains", file=sys.stderr)
    return {
        "roles": {role: {"in_chains": used[role], "caught": caught[role]} for role in ROLES},
        "answer_s_median": statistics.median(answer_s),
        "check_s_median": statistics.median(check_s),
        "audits_not_done": sum(undone.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chains", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, stage_liar_mesh(Path(tmp) / "mesh") as nodes:
        report = trio.run(campaign, nodes, Path(tmp) / "client", args.chains, args.seed)
    liars = {r: v for r, v in report["roles"].items() if ROLES[r][1] is not None}
    honest = {r: v for r, v in report["roles"].items() if ROLES[r][1] is None}
    print(f"{'stage':<16} {'lie':<12} {'in chains':>9} {'caught':>7} {'rate':>7}")
    for role, v in report["roles"].items():
        lie = ROLES[role][1] or "(honest)"
        rate = v["caught"] / v["in_chains"] if v["in_chains"] else 0.0
        print(f"{role:<16} {lie:<12} {v['in_chains']:>9} {v['caught']:>7} {rate:>7.1%}")
    lying = sum(v["in_chains"] for v in liars.values())
    detected = sum(v["caught"] for v in liars.values())
    flagged = sum(v["caught"] for v in honest.values())
    honest_used = sum(v["in_chains"] for v in honest.values())
    print(
        f"\nlying stages caught: {detected}/{lying} ({detected / max(1, lying):.1%}); "
        f"honest stages flagged: {flagged}/{honest_used}; audits not done: {report['audits_not_done']}"
    )
    print(
        f"median answer {report['answer_s_median']:.2f} s; median check after the last token "
        f"{report['check_s_median']:.2f} s"
    )
    summary = {
        "bench": "stage_liars",
        "chains": args.chains,
        "detection_rate": round(detected / max(1, lying), 4),
        "lying_stages": lying,
        "honest_flagged": flagged,
        "honest_stages": honest_used,
        **report,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
