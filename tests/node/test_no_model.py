"""`din node --no-model`: a node that joins and routes and serves no model (real processes).

The shape of a small deployment: the no-model node is everyone's only bootstrap address
(a public VPS), a model node joins through it, and a client that knows only the
no-model node finds the model node behind it and is answered by it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from tests.helpers import answer_to, chat, open_infer, raw_host

from dinet.client.network import open_network
from dinet.config import ClientSettings
from dinet.errors import PeerUnreachable
from dinet.node.local_mesh import NodeProcess, child_pids, start_node
from dinet.p2p.discovery import fetch_manifests
from dinet.wire.manifest import verify_manifest


@dataclass
class Deployment:
    router: NodeProcess  # --no-model, the only bootstrap address anyone is given
    server: NodeProcess  # serves the model, joined through the router


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("no-model")
    router = start_node(root / "router", no_model=True)
    try:
        server = start_node(root / "server", bootstrap=[router.addr])
        try:
            yield Deployment(router, server)
        finally:
            server.stop()
    finally:
        router.stop()


def test_it_says_it_serves_no_model_in_its_json_node_file_and_log(deployment):
    router = deployment.router
    assert (router.model_id, router.model_hash) == (None, None)  # from `din node --json`
    assert router.printed["engine"] is None
    assert router.printed["reachability"]["state"] in ("public", "private", "unknown")
    record = json.loads((router.home / "node.json").read_text())
    assert (record["model_id"], record["model_hash"], record["engine"]) == (None, None, None)
    assert record["peer_id"] == router.peer_id and record["pid"] == router.process.pid
    assert record["reachability"]["state"] in ("public", "private", "unknown")
    assert "serves no model" in router.log_path.read_text()


def test_it_loads_no_engine_and_holds_no_model(deployment):
    router = deployment.router
    assert child_pids(router.process.pid) == []  # no engine worker
    assert not (router.home / "models").exists()  # nothing imported, nothing pulled
    assert child_pids(deployment.server.process.pid) != []  # (a model node has one)


async def test_its_manifest_offers_nothing_and_it_refuses_inference(deployment):
    router = deployment.router
    async with raw_host() as me:
        peer_id = await me.dial(router.addr)
        signed, _ = await fetch_manifests(me, peer_id, include_known=False)
        own = verify_manifest(signed[0])
        assert own.peer_id == router.peer_id and own.models == ()
        with pytest.raises(PeerUnreachable):  # it does not even speak /dinet/infer/1
            await open_infer(me, router.addr)


async def test_a_client_that_knows_only_it_is_answered_by_the_model_node_behind_it(deployment, tmp_path):
    settings = ClientSettings(
        home=tmp_path / "client", bootstrap=[deployment.router.addr], mdns=False, discover_timeout_s=30
    )
    async with open_network(settings) as network:
        found = await network.discover(None, None, timeout=30)
        assert [p.peer_id for p in found] == [deployment.server.peer_id]  # never the router
        for _ in range(3):  # whatever the routing's choice, the router never answers
            _, answer = await answer_to(network, chat("Name a colour.", max_tokens=4))
            assert answer.peer_id == deployment.server.peer_id
            assert answer.model_hash == deployment.server.model_hash
        # It learned the model node's manifest through the router, and holds the router's too.
        known = {m.peer_id: m for m in network.directory.manifests()}
        assert set(known) == {deployment.router.peer_id, deployment.server.peer_id}
        assert known[deployment.router.peer_id].models == ()


def test_din_peers_shows_it_as_serving_no_model(deployment, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "dinet", "peers", "--no-mdns", "--home", str(tmp_path), "--wait", "3"]
        + ["--bootstrap", deployment.router.addr],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "300"},  # one line per peer
    )
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if deployment.router.peer_id[-8:] in line)
    assert "no model" in row


@pytest.mark.parametrize("contradiction", [["--model", "smollm2-135m-instruct"], ["--layers", "0:10"]])
def test_contradictory_settings_are_one_clear_line(tmp_path, contradiction):
    done = subprocess.run(
        [sys.executable, "-m", "dinet", "node", "--no-model", "--home", str(tmp_path), *contradiction],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"error: --no-model contradicts {contradiction[0]}: a node that serves no model cannot take it "
        "(set one or the other)"
    )
