"""Receipts for real answers from real node processes: both ledgers hold them, forgeries fail."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import trio
from tests.helpers import chat, open_infer, raw_host, read_replies

from dinet.client.ask import Answer, ask
from dinet.client.network import open_network
from dinet.errors import BadReceipt
from dinet.ledger import Ledger
from dinet.wire.keys import SigningKey
from dinet.wire.messages import EndFrame, InferRequest, TokenFrame, encode
from dinet.wire.receipt import (
    ReceiptBody,
    check_delivery,
    countersign,
    request_hash,
    sign_receipt,
    verify_node_signature,
)


def din(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dinet", *args], capture_output=True, text=True, timeout=120)


async def node_has(node_home, receipt_id: str, wait_s: float = 15.0) -> bool:
    """Whether the node's ledger comes to hold the receipt (it records it just after the
    client countersigns); False after `wait_s`."""
    with Ledger.in_home(node_home) as ledger, trio.move_on_after(wait_s):
        while True:
            if any(r.receipt.receipt_id == receipt_id for r in ledger.receipts(limit=50)):
                return True
            await trio.sleep(0.1)
    return False


async def test_every_answer_leaves_a_countersigned_receipt_in_both_ledgers(client_settings, mesh):
    homes = {n.peer_id: n.home for n in mesh.nodes}
    answers: list[Answer] = []

    async def one(i: int) -> None:
        async for event in ask(network, chat(f"Count to {i + 3}.", max_tokens=8)):
            if isinstance(event, Answer):
                answers.append(event)

    async with open_network(client_settings) as network:
        await network.discover(None, None, timeout=10, want=3)
        async with trio.open_nursery() as nursery:  # at once, so they spread over the nodes
            for i in range(3):
                nursery.start_soon(one, i)
        me = network.peer_id
    assert len(answers) == 3
    for answer in answers:
        assert not answer.refused_receipts
        (receipt,) = answer.receipts
        body = ReceiptBody.model_validate_json(receipt.body)
        assert body.node == answer.peer_id and body.client == me
        assert body.completion_tokens == answer.usage.completion_tokens == 8
        assert await node_has(homes[answer.peer_id], receipt.receipt_id)
    with Ledger.in_home(client_settings.home) as ledger:
        kept = {r.receipt.receipt_id for r in ledger.receipts()}
    assert kept == {a.receipts[0].receipt_id for a in answers}
    for home in [client_settings.home, *{homes[a.peer_id] for a in answers}]:
        done = din("ledger", "verify", "--json", "--home", str(home))
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["ok"]
    listed = json.loads(din("ledger", "receipts", "--json", "--home", str(client_settings.home)).stdout)
    assert {r["receipt_id"] for r in listed} == kept


async def answer_with_receipt(host, addr: str, request: InferRequest):
    framed = await open_infer(host, addr)
    await framed.send(request)
    replies = await read_replies(framed)
    end = replies[-1]
    assert isinstance(end, EndFrame) and end.receipt is not None
    tokens = [r.token_id for r in replies if isinstance(r, TokenFrame)]
    return framed, end, tokens


async def test_the_client_refuses_forged_and_inflated_receipts(mesh):
    node = mesh.nodes[0]
    request = InferRequest(request_id="forgery", params=chat("Say yes.", max_tokens=6))
    async with raw_host() as host:
        framed, end, tokens = await answer_with_receipt(host, node.addr, request)
        await framed.close()
        me = host.peer_id
    honest = verify_node_signature(end.receipt)
    expected = dict(
        node=node.peer_id,
        client=me,
        request_id="forgery",
        request_hash=request_hash(encode(request)),
        model_hash=node.model_hash,
        first_index=0,
        token_ids=tokens,
        prompt_tokens=end.usage.prompt_tokens,
        max_price_prompt=0.0,
        max_price=0.0,
    )
    check_delivery(honest, **expected)  # the real node's receipt describes what it sent
    assert honest.completion_tokens == len(tokens) == 6

    # The node's signature over a body someone edited.
    edited = end.receipt.model_copy(
        update={"body": end.receipt.body.replace('"completion_tokens":6', '"completion_tokens":60')}
    )
    with pytest.raises(BadReceipt, match="node signature"):
        verify_node_signature(edited)
    # A dishonest node signs an inflated count with its own, valid key.
    liar = SigningKey.generate()
    inflated = sign_receipt(honest.model_copy(update={"node": liar.peer_id, "completion_tokens": 9}), liar)
    with pytest.raises(BadReceipt, match="we received 6"):
        check_delivery(verify_node_signature(inflated), **{**expected, "node": liar.peer_id})
    # Or claims the tokens of another answer, or a price above the one it advertised.
    with pytest.raises(BadReceipt, match="output hash"):
        check_delivery(honest, **{**expected, "token_ids": [t + 1 for t in tokens]})
    dear = honest.model_copy(update={"price_per_token": 0.5})
    with pytest.raises(BadReceipt, match="charges more"):
        check_delivery(dear, **expected)


def refusals_logged(node) -> int:
    """Countersigned receipts the node has turned down so far (it logs each)."""
    return node.log_path.read_text(errors="replace").count("not recorded")


async def test_the_node_keeps_only_genuine_countersignatures_and_no_replays(mesh):
    node = mesh.nodes[1]
    refused_before = refusals_logged(node)
    async with raw_host() as host:
        key = host.key
        # A countersignature by a key other than the client's own is not recorded.
        request = InferRequest(request_id="forged-countersign", params=chat("Hi.", max_tokens=3))
        framed, end, _ = await answer_with_receipt(host, node.addr, request)
        forged = countersign(end.receipt, SigningKey.generate())
        await framed.send(forged)
        await framed.close()
        # A genuine one is.
        request = InferRequest(request_id="genuine", params=chat("Hi.", max_tokens=3))
        framed, end, _ = await answer_with_receipt(host, node.addr, request)
        genuine = countersign(end.receipt, key)
        await framed.send(genuine)
        await framed.close()
        assert await node_has(node.home, genuine.receipt_id)
        # Replaying it after another answer does not count it again, nor pay for the new one.
        request = InferRequest(request_id="replay", params=chat("Hi.", max_tokens=3))
        framed, end, _ = await answer_with_receipt(host, node.addr, request)
        await framed.send(genuine)
        await framed.close()
        replay_id = countersign(end.receipt, key).receipt_id
    with trio.fail_after(30):  # the node has judged the forgery and the replay
        while refusals_logged(node) < refused_before + 2:
            await trio.sleep(0.1)
    with Ledger.in_home(node.home) as ledger:
        ids = [r.receipt.receipt_id for r in ledger.receipts()]
    assert forged.receipt_id not in ids and replay_id not in ids
    assert ids.count(genuine.receipt_id) == 1
