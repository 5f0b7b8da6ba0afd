"""A home encrypted at rest (DINET_HOME_PASSPHRASE): identity keys and SQLite files sealed,
nothing readable without the passphrase, nothing overwritten with a wrong one, a plaintext
home sealed in place, and the ledger's guarantees (kill -9, several processes) kept."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.ledger._receipts import make_receipt

from dinet.errors import ConfigError
from dinet.home_crypto import CHECK_FILE, PASSPHRASE_ENV, is_sealed_file, write_secret
from dinet.ledger import Ledger
from dinet.p2p.identity import CLIENT_IDENTITY, NODE_IDENTITY, load_or_create_identity
from dinet.trust.reputation import Reputation
from dinet.wire.keys import SigningKey

ROOT = Path(__file__).resolve().parents[1]
PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def passphrase(monkeypatch):
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)


def din(*args: str, passphrase: str | None = PASSPHRASE) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != PASSPHRASE_ENV}
    if passphrase is not None:
        env[PASSPHRASE_ENV] = passphrase
    return subprocess.run(
        [sys.executable, "-m", "dinet", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_an_identity_is_sealed_and_opens_only_with_its_passphrase(tmp_path, passphrase, monkeypatch):
    key = load_or_create_identity(tmp_path)
    path = tmp_path / NODE_IDENTITY
    sealed = path.read_bytes()
    assert is_sealed_file(path) and key.seed not in sealed
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    assert load_or_create_identity(tmp_path).peer_id == key.peer_id

    monkeypatch.setenv(PASSPHRASE_ENV, "wrong")
    with pytest.raises(ConfigError, match=f"wrong passphrase for {path}"):
        load_or_create_identity(tmp_path)
    with pytest.raises(ConfigError, match="wrong passphrase"):  # nor is a new key made beside it
        load_or_create_identity(tmp_path, CLIENT_IDENTITY)
    assert not (tmp_path / CLIENT_IDENTITY).exists()
    monkeypatch.delenv(PASSPHRASE_ENV)
    with pytest.raises(ConfigError, match=f"{path} is encrypted: set {PASSPHRASE_ENV}"):
        load_or_create_identity(tmp_path)
    assert path.read_bytes() == sealed  # untouched by every failed attempt


def test_a_plaintext_identity_is_sealed_in_place(tmp_path, monkeypatch, caplog):
    key = load_or_create_identity(tmp_path)  # no passphrase yet
    assert (tmp_path / NODE_IDENTITY).read_bytes() == key.seed
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    with caplog.at_level(logging.WARNING):
        assert load_or_create_identity(tmp_path).peer_id == key.peer_id
    assert "encrypted" in caplog.text and "in place" in caplog.text and PASSPHRASE not in caplog.text
    sealed = (tmp_path / NODE_IDENTITY).read_bytes()
    assert is_sealed_file(tmp_path / NODE_IDENTITY) and key.seed not in sealed
    assert load_or_create_identity(tmp_path).peer_id == key.peer_id


def test_a_sealed_ledger_holds_no_plaintext_and_refuses_a_wrong_passphrase(tmp_path, passphrase, monkeypatch):
    node, client = SigningKey.generate(), SigningKey.generate()
    receipt = make_receipt(node, client, completion=7)
    with Ledger.in_home(tmp_path) as ledger:
        ledger.record(receipt)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert set(files) == {"ledger.sqlite", "ledger.sqlite.lock", CHECK_FILE}  # no -wal, no -journal
    for secret in (receipt.receipt_id, node.peer_id, client.peer_id, receipt.node_signature, "receipts"):
        assert all(secret.encode() not in data for data in files.values()), secret

    with Ledger.in_home(tmp_path) as ledger:  # reopened: all there
        assert [r.receipt.receipt_id for r in ledger.receipts()] == [receipt.receipt_id]
    assert (tmp_path / "ledger.sqlite").read_bytes() == files["ledger.sqlite"]  # reading writes nothing
    monkeypatch.setenv(PASSPHRASE_ENV, "not it")
    with pytest.raises(ConfigError, match="wrong passphrase for .*ledger.sqlite"):
        Ledger.in_home(tmp_path)
    monkeypatch.delenv(PASSPHRASE_ENV)
    with pytest.raises(ConfigError, match=f"set {PASSPHRASE_ENV}"):
        Ledger.in_home(tmp_path)
    assert (tmp_path / "ledger.sqlite").read_bytes() == files["ledger.sqlite"]  # nothing overwritten


def test_a_plaintext_ledger_is_sealed_in_place_with_every_receipt(tmp_path, monkeypatch, caplog):
    node, client = SigningKey.generate(), SigningKey.generate()
    receipts = [make_receipt(node, client) for _ in range(5)]
    ledger = Ledger.in_home(tmp_path)  # plaintext, in WAL mode: the last commits may sit in the -wal
    ledger.record_many(receipts)
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    with caplog.at_level(logging.WARNING), Ledger.in_home(tmp_path) as sealed:
        assert [r.receipt.receipt_id for r in sealed.receipts()] == [r.receipt_id for r in receipts]
        sealed.record(make_receipt(node, client))
    ledger.close()
    assert "encrypted" in caplog.text and "ledger.sqlite" in caplog.text
    data = (tmp_path / "ledger.sqlite").read_bytes()
    assert is_sealed_file(tmp_path / "ledger.sqlite") and receipts[0].receipt_id.encode() not in data
    assert not (tmp_path / "ledger.sqlite-wal").exists()
    with Ledger.in_home(tmp_path) as reopened:
        assert reopened.summary([node.peer_id]).receipts == 6


def test_the_reputation_book_is_sealed_too(tmp_path, passphrase):
    peer = SigningKey.generate().peer_id
    with Reputation.in_home(tmp_path) as book:
        book.record(peer, "success")
        score = book.standing(peer).score
    assert peer.encode() not in (tmp_path / "reputation.sqlite").read_bytes()
    with Reputation.in_home(tmp_path) as book:
        assert book.standing(peer).score == pytest.approx(score)


def test_two_writers_sharing_a_sealed_ledger_killed_mid_write_lose_no_committed_receipt(tmp_path, passphrase):
    """A node and a client writing one home's ledger at once, as happens when they share a
    home: each commit must see the other's, and kill -9 must leave every committed one."""
    write_secret(tmp_path / NODE_IDENTITY, b"n" * 32)  # the identity `_writer` signs with
    command = [sys.executable, "-m", "tests.ledger._writer", str(tmp_path), "1"]
    writers = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    committed: list[str] = []
    try:
        for writer in writers:  # each commits a few dozen, both running at once
            assert writer.stdout is not None
            for _ in range(40):
                line = writer.stdout.readline()
                assert line, "a writer stopped on its own"
                committed.append(line.strip())
        for writer in writers:
            os.kill(writer.pid, signal.SIGKILL)
    finally:
        for writer in writers:
            writer.kill()
            writer.wait()
            assert writer.stdout is not None
            writer.stdout.close()
    assert all(w.returncode == -signal.SIGKILL for w in writers)
    done = din("ledger", "verify", "--json", "--home", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["receipts"] >= len(committed)
    with Ledger.in_home(tmp_path) as ledger:
        assert set(committed) <= {r.receipt.receipt_id for r in ledger.receipts()}


def test_din_says_to_set_the_passphrase_for_an_encrypted_home(tmp_path, passphrase):
    with Ledger.in_home(tmp_path) as ledger:
        ledger.record(make_receipt(SigningKey.generate(), SigningKey.generate()))
    done = din("ledger", "--home", str(tmp_path), passphrase=None)
    assert done.returncode == 1 and f"set {PASSPHRASE_ENV}" in done.stderr, done.stderr
    done = din("ledger", "--home", str(tmp_path), passphrase="guess")
    assert done.returncode == 1 and "wrong passphrase" in done.stderr and "guess" not in done.stderr
    assert din("ledger", "--json", "--home", str(tmp_path)).returncode == 0
