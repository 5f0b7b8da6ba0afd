"""The ledger on real SQLite files: replays refused, forged rows caught, a kill -9 loses nothing."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from tests.ledger._receipts import make_receipt

from dinet.errors import BadReceipt, ReplayedReceipt
from dinet.ledger import Ledger
from dinet.wire.keys import SigningKey
from dinet.wire.receipt import CountersignedReceipt, countersign, verify_countersigned

ROOT = Path(__file__).resolve().parents[2]


def din(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dinet", *args], capture_output=True, text=True, timeout=300)


def test_balances_come_from_receipts_alone(tmp_path):
    me, alice, bob = (SigningKey.generate() for _ in range(3))
    with Ledger.in_home(tmp_path) as ledger:
        ledger.record(make_receipt(me, alice, completion=10, prompt=4, price=1.0, prompt_price=0.5))
        ledger.record(make_receipt(me, alice, completion=2, prompt=0, price=1.0, prompt_price=0.5))
        ledger.record(make_receipt(bob, me, completion=3, prompt=2, price=2.0, prompt_price=1.0))
        summary = ledger.summary([me.peer_id])
    assert summary.earned == 14.0 and summary.spent == 8.0 and summary.balance == 6.0
    accounts = {p.peer_id: p for p in summary.peers}
    assert accounts[alice.peer_id].balance == 14.0
    assert accounts[bob.peer_id].balance == -8.0


def test_a_replayed_receipt_is_refused_and_counts_once(tmp_path):
    node, client = SigningKey.generate(), SigningKey.generate()
    receipt = make_receipt(node, client)
    with Ledger.in_home(tmp_path) as ledger:
        ledger.record(receipt)
        with pytest.raises(ReplayedReceipt, match="already counted"):
            ledger.record(receipt)
        # Another receipt for the same request from the same node: a second bill for one answer.
        body = verify_countersigned(receipt)
        again = make_receipt(node, client, request_id=body.request_id, completion=17)
        with pytest.raises(ReplayedReceipt, match="another receipt"):
            ledger.record(again)
        # A batch holding a replay is refused whole: nothing of it is stored.
        fresh = make_receipt(node, client)
        with pytest.raises(ReplayedReceipt):
            ledger.record_many([fresh, receipt])
        assert [r.receipt.receipt_id for r in ledger.receipts()] == [receipt.receipt_id]
        assert ledger.verify([node.peer_id]).ok


def test_forged_and_inflated_receipts_are_refused(tmp_path):
    node, client, mallory = (SigningKey.generate() for _ in range(3))
    honest = make_receipt(node, client, completion=5)
    body = json.loads(honest.body)
    # Inflate the count and keep the node's signature: the signature no longer matches.
    inflated = {
        **body,
        "completion_tokens": 50,
        "amount": 50 * body["price_per_token"] + body["prompt_tokens"] * body["price_per_prompt_token"],
    }
    forged = CountersignedReceipt(
        body=json.dumps(inflated),
        node_signature=honest.node_signature,
        client_signature=honest.client_signature,
    )
    # A receipt "countersigned" by someone other than the client it names.
    not_client = countersign(make_receipt(node, client).model_copy(), mallory)
    # An amount that does not follow from the counts and prices, validly signed.
    overcharged = make_receipt(node, client, amount=999.0)
    with Ledger.in_home(tmp_path) as ledger:
        for bad, reason in (
            (forged, "node signature"),
            (not_client, "client signature"),
            (overcharged, "its counts give"),
        ):
            with pytest.raises(BadReceipt, match=reason):
                ledger.record(bad)
        ledger.record(honest)
        assert [r.receipt.receipt_id for r in ledger.receipts()] == [honest.receipt_id]


def test_verify_finds_a_row_changed_behind_the_ledgers_back(tmp_path):
    node, client = SigningKey.generate(), SigningKey.generate()
    with Ledger.in_home(tmp_path) as ledger:
        for _ in range(3):
            ledger.record(make_receipt(node, client))
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    db.execute("UPDATE receipts SET amount = amount * 10 WHERE rowid = 2")
    db.commit()
    db.close()
    (tmp_path / "identity.key").write_bytes(b"x" * 32)
    done = din("ledger", "verify", "--json", "--home", str(tmp_path))
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert not report["ok"] and report["receipts"] == 2
    assert "do not match its signed body" in report["problems"][0]


@pytest.mark.parametrize("batch", [1, 50])
def test_kill_9_while_writing_loses_no_committed_receipt(tmp_path, batch):
    (tmp_path / "identity.key").write_bytes(b"n" * 32)
    command = [sys.executable, "-m", "tests.ledger._writer", str(tmp_path), str(batch)]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as writer:
        assert writer.stdout is not None
        committed = []
        try:
            while len(committed) < 300:  # kill it mid-stream, whatever it is doing at that moment
                line = writer.stdout.readline()
                assert line, "the writer stopped on its own"
                committed.append(line.strip())
            os.kill(writer.pid, signal.SIGKILL)
        finally:
            writer.kill()  # leaving the block closes its pipe and reaps it
    assert writer.returncode == -signal.SIGKILL
    done = din("ledger", "verify", "--json", "--home", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["receipts"] >= len(committed)
    with Ledger.in_home(tmp_path) as ledger:
        stored = {r.receipt.receipt_id for r in ledger.receipts()}
        assert set(committed) <= stored
        # Still writable after the crash.
        ledger.record(make_receipt(SigningKey(b"n" * 32), SigningKey.generate()))


def test_ten_thousand_receipts_are_recorded_and_verified(tmp_path):
    me = SigningKey(b"m" * 32)
    (tmp_path / "identity.key").write_bytes(b"m" * 32)
    clients = [SigningKey.generate() for _ in range(20)]
    receipts = [make_receipt(me, clients[i % 20], completion=1 + i % 7) for i in range(10_000)]
    with Ledger.in_home(tmp_path) as ledger:
        for start in range(0, 10_000, 500):
            ledger.record_many(receipts[start : start + 500])
        expected = sum(verify_countersigned(r).amount for r in receipts)
        summary = ledger.summary([me.peer_id])
    assert summary.receipts == 10_000
    assert summary.earned == pytest.approx(expected)
    done = din("ledger", "verify", "--json", "--home", str(tmp_path))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["receipts"] == 10_000
    assert report["earned"] == pytest.approx(expected)
    exported = din("ledger", "export", "--home", str(tmp_path)).stdout.splitlines()
    assert len(exported) == 10_000
    assert (
        CountersignedReceipt.model_validate(
            {k: v for k, v in json.loads(exported[0]).items() if k != "receipt_id"}
        ).receipt_id
        == receipts[0].receipt_id
    )
