"""bench/simulate.py in its quick mode: the simulation of the overlay cores runs end to end
and gives sane results (no timings asserted: the numbers belong to the benchmark)."""

from __future__ import annotations

import json
import math

from bench.simulate import main


def test_quick_simulation_finds_models_and_answers_requests(capsys):
    main(["--quick"])
    out = capsys.readouterr().out
    assert "hops p50" in out  # the table for people
    rows = json.loads(out.strip().splitlines()[-1])["simulate"]  # the one JSON line for scripts
    assert [row["n"] for row in rows] == [200, 400]
    for row in rows:
        assert row["lookup_success"] >= 0.95
        assert row["nearest_found"] >= 0.9  # FIND_NODE reaches the true nearest live node
        assert row["hops_p95"] <= math.log2(row["n"]) + 2
        assert row["findable_trials"] >= 1 and row["findable_s_median"] is not None
        assert row["requests"] > 0 and 0.0 <= row["request_success"] <= 1.0
        assert row["request_success"] >= 0.9
        assert row["departed"] > 0 and row["joined"] > 0  # churn happened
        assert row["supply_follow_s"] is not None  # auto nodes moved to the model in demand
        assert row["dht_bytes_per_node_s"] > 0 and row["swim_bytes_per_client_s"] > 0
