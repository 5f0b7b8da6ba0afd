"""After a failover, the peer that finished bills only the tokens it added; priced nodes and budgets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import trio
from tests.helpers import chat

from dinet.client.ask import Answer, ask
from dinet.client.network import open_network
from dinet.client.options import AskOptions
from dinet.config import ClientSettings
from dinet.errors import NoCapablePeer
from dinet.ledger import Ledger
from dinet.node.local_mesh import LocalMesh
from dinet.wire.receipt import ReceiptBody


@pytest.fixture(scope="module")
def priced_mesh(tmp_path_factory):
    with LocalMesh(
        tmp_path_factory.mktemp("priced"),
        size=2,
        threads=1,
        extra_args=["--price", "0.5", "--prompt-price", "0.25"],
    ) as running:
        yield running


async def test_the_finishing_peer_bills_only_its_share_at_its_price(tmp_path, priced_mesh):
    settings = ClientSettings(home=tmp_path, bootstrap=priced_mesh.bootstrap[:1], mdns=False)
    params = chat("Write a short poem about rivers.", max_tokens=40)
    received = 0
    attempts: list[str] = []
    async with open_network(settings) as network:
        with trio.fail_after(30):
            while len(network.candidates(None, None)) < 2:
                await network.discover(None, None, timeout=5, want=2)
        async for event in ask(network, params, on_attempt=attempts.append):
            if isinstance(event, Answer):
                answer = event
                continue
            received += 1
            if received == 5 and len(attempts) == 1:
                victim = next(n for n in priced_mesh.nodes if n.peer_id == attempts[0])
                os.kill(victim.process.pid, signal.SIGKILL)
    assert answer.peer_id != victim.peer_id
    (receipt,) = answer.receipts  # the killed peer could sign nothing
    body = ReceiptBody.model_validate_json(receipt.body)
    assert body.node == answer.peer_id
    assert body.first_index >= 5 and body.first_index + body.completion_tokens == received
    assert body.amount == body.prompt_tokens * 0.25 + body.completion_tokens * 0.5
    with Ledger.in_home(tmp_path) as ledger:
        summary = ledger.summary([network.peer_id])
    assert summary.spent == body.amount
    done = subprocess.run(
        [sys.executable, "-m", "dinet", "ledger", "--json", "--home", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    shown = json.loads(done.stdout)
    assert shown["spent"] == body.amount and shown["peers"][0]["peer_id"] == answer.peer_id


async def test_no_peer_above_the_budget_is_ever_used(tmp_path, priced_mesh):
    settings = ClientSettings(
        home=tmp_path,
        bootstrap=[n.addr for n in priced_mesh.nodes if n.process.poll() is None][:1],
        mdns=False,
    )
    async with open_network(settings) as network:
        await network.discover(None, None, timeout=10)
        with pytest.raises(NoCapablePeer, match="within 0.4 credits"):
            async for _ in ask(network, chat("Hi.", max_tokens=4), AskOptions(max_price=0.4)):
                pass
        async for event in ask(network, chat("Hi.", max_tokens=4), AskOptions(max_price=0.5)):
            if isinstance(event, Answer):
                assert event.receipts
    with Ledger.in_home(tmp_path) as ledger:
        assert len(list(ledger.receipts())) == 1  # the refused request cost nothing
