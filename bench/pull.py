"""Pull the default model (98 MB) over loopback from 1 and from 3 real node processes.

Reports MB/s and the puller's peak memory (RSS of the `din model pull` process),
then the bytes a one-tensor update transfers (two tiny-GGUF versions between
libp2p hosts in this process). Prints a table, then one JSON line.

    .venv/bin/python bench/pull.py [--runs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.models._tiny import write_tiny  # noqa: E402

from dinet.models.fetch import pull_model  # noqa: E402
from dinet.models.store import ModelStore  # noqa: E402
from dinet.node.local_mesh import LocalMesh  # noqa: E402
from dinet.wire.keys import SigningKey  # noqa: E402


def pull_once(home: Path, mesh: LocalMesh) -> dict[str, float]:
    """One `din model pull` into an empty home from every node of `mesh`."""
    args = [
        sys.executable,
        "-m",
        "dinet",
        "model",
        "pull",
        mesh.nodes[0].model_hash,
        "--json",
        "--no-mdns",
        "--home",
        str(home),
        "--bootstrap",
        mesh.nodes[0].addr,
    ]
    script = (
        "import resource, runpy, sys, json\n"
        "try:\n    runpy.run_module('dinet', run_name='__main__')\n"
        "finally:\n    sys.stderr.write(json.dumps({'peak_rss_kb': "
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}) + '\\n')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *args[3:]],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    report = json.loads(done.stdout)
    peak = json.loads(done.stderr.strip().splitlines()[-1])["peak_rss_kb"]
    used = sum(1 for s in report["peers"].values() if s["chunks"])
    return {
        "mb_s": report["fetched_bytes"] / 1e6 / report["seconds"],
        "peak_rss_mb": peak / 1024,
        "seconds": report["seconds"],
        "peers_used": used,
    }


async def diff_bytes(root: Path) -> dict[str, int]:
    from tests.helpers import raw_host
    from tests.models.test_fetch import connect, serving

    v1 = write_tiny(root / "v1.gguf")
    v2 = write_tiny(root / "v2.gguf", change="blk.0.attn_norm.weight")
    server = ModelStore(root / "server")
    new = server.import_file(v2, SigningKey.generate(), model_id="tiny")
    mine = ModelStore(root / "me")
    mine.import_file(v1, SigningKey.generate(), model_id="tiny")
    async with serving(server) as host, raw_host() as me:
        peers = await connect(me, host)
        report = await pull_model(me, mine, new.model_hash, peers)
    return {
        "file_bytes": new.card.file_size,
        "fetched_bytes": report.fetched_bytes,
        "card_bytes": len(new.signed.model_dump_json()),
        "fetched_chunks": report.fetched_chunks,
        "total_chunks": report.total_chunks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for size in (1, 3):
            with LocalMesh(root / f"mesh{size}", size=size, threads=1) as mesh:
                runs = [pull_once(root / f"pull{size}-{i}", mesh) for i in range(args.runs)]
            best = max(runs, key=lambda r: r["mb_s"])
            results[f"{size}_peer"] = {k: round(v, 2) for k, v in best.items()}
        results["diff"] = trio.run(diff_bytes, root)
    print(f"{'pull of the 98 MB model':28} {'MB/s':>8} {'peak RSS MB':>12} {'peers used':>11}")
    for size in (1, 3):
        r = results[f"{size}_peer"]
        assert isinstance(r, dict)
        label = f"from {size} peer(s)"
        print(f"{label:28} {r['mb_s']:8.1f} {r['peak_rss_mb']:12.1f} {r['peers_used']:11.0f}")
    d = results["diff"]
    assert isinstance(d, dict)
    print(
        f"one-tensor update: {d['fetched_bytes']} of {d['file_bytes']} bytes "
        f"({d['fetched_chunks']}/{d['total_chunks']} chunks) + model card {d['card_bytes']} bytes"
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
