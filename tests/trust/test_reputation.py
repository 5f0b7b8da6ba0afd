"""The reputation book on real SQLite files: the formula, decay, exclusion, and kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dinet.errors import ReputationError
from dinet.routing.select import PeerView, excluded
from dinet.trust import Event, Reputation
from dinet.trust.reputation import HALF_LIFE_S, slower_than_claimed

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_800_000_000.0


def view_of(book: Reputation, peer_id: str, now: float = T0) -> PeerView:
    standing = book.standing(peer_id, now=now)
    return PeerView(
        peer_id,
        1.0,
        50.0,
        20.0,
        0,
        0,
        1,
        reputation=None if standing is None else standing.score,
        evidence=0.0 if standing is None else standing.events,
    )


def test_unknown_peers_have_no_score_and_good_work_keeps_a_perfect_one(tmp_path):
    with Reputation.in_home(tmp_path) as book:
        assert book.score("stranger") is None
        for i in range(5):
            book.record("steady", Event.SUCCESS, now=T0 + i)
            book.record("steady", Event.VOTE_AGREE, now=T0 + i)
        assert book.score("steady", now=T0 + 5) == 1.0
        book.record("shaky", Event.FAILURE, now=T0)
        assert book.score("shaky", now=T0) == pytest.approx(2 / 2.5)


def test_a_liar_is_excluded_after_two_caught_answers_and_one_never_excludes(tmp_path):
    with Reputation.in_home(tmp_path) as book:
        book.record_many([("liar", Event.SUCCESS), ("liar", Event.VOTE_DISSENT)], now=T0)
        assert not excluded(view_of(book, "liar"))  # one caught answer: deprioritised only
        assert book.score("liar", now=T0) < 0.35
        book.record_many([("liar", Event.SUCCESS), ("liar", Event.VERIFY_FAIL)], now=T0 + 1)
        assert excluded(view_of(book, "liar", T0 + 1))


def test_lapses_and_slowness_do_not_exclude_a_peer_that_also_answers(tmp_path):
    with Reputation.in_home(tmp_path) as book:
        for i in range(50):  # slow on every answer, and one failure in three
            book.record_many([("sluggish", Event.SUCCESS), ("sluggish", Event.SLOW)], now=T0 + i)
            if i % 3 == 0:
                book.record("sluggish", Event.FAILURE, now=T0 + i)
        assert book.score("sluggish", now=T0 + 50) > 0.7
        assert not excluded(view_of(book, "sluggish", T0 + 50))
        # A peer that only ever fails is excluded, but not before 8 failures in a row.
        for i in range(8):
            assert not excluded(view_of(book, "dead", T0 + i))
            book.record("dead", Event.FAILURE, now=T0 + i)
        assert excluded(view_of(book, "dead", T0 + 8))


def test_evidence_halves_every_half_life_and_an_excluded_peer_returns(tmp_path):
    with Reputation.in_home(tmp_path, half_life_s=3600.0) as book:
        for _ in range(6):
            book.record_many([("liar", Event.SUCCESS), ("liar", Event.VOTE_DISSENT)], now=T0)
        now = book.standing("liar", now=T0)
        later = book.standing("liar", now=T0 + 3600.0)
        assert now is not None and later is not None
        assert later.bad == pytest.approx(now.bad / 2) and later.events == pytest.approx(now.events / 2)
        assert book.standing("liar", now=T0 - 100.0) == now  # a clock that went backwards decays nothing
        assert excluded(view_of(book, "liar", T0))
        # Forgiven, slowly: still out after one half-life, back after a few.
        assert excluded(view_of(book, "liar", T0 + 3600.0))
        assert not excluded(view_of(book, "liar", T0 + 3 * 3600.0))
        # Back on probation: the next lie caught puts it out again at once.
        book.record_many([("liar", Event.SUCCESS), ("liar", Event.VOTE_DISSENT)], now=T0 + 3 * 3600.0)
        assert excluded(view_of(book, "liar", T0 + 3 * 3600.0))
    assert HALF_LIFE_S == 6 * 3600.0


def test_standings_survive_reopening_and_the_file_checks_against_its_log(tmp_path):
    with Reputation.in_home(tmp_path) as book:
        book.record_many([("a", Event.SUCCESS), ("b", Event.VOTE_DISSENT), ("a", Event.SLOW)], now=T0)
        book.record("b", Event.VERIFY_PASS, now=T0 + 7200.0)
        expected = book.standings(now=T0 + 9000.0)
    with Reputation.in_home(tmp_path) as again:
        assert again.standings(now=T0 + 9000.0) == expected
        assert again.check() == []
    db = sqlite3.connect(tmp_path / "reputation.sqlite")
    db.execute("UPDATE standings SET bad = 0 WHERE peer_id = 'b'")  # a forgiven liar
    db.execute("UPDATE events SET good = good + 5 WHERE id = 2")
    db.commit()
    db.close()
    with Reputation.in_home(tmp_path) as tampered:
        problems = tampered.check()
    assert any("standing of b" in p for p in problems)
    assert any("event 3 of a" in p or "event 4 of b" in p for p in problems)


def test_bad_input_gets_a_typed_error_and_records_nothing(tmp_path):
    with Reputation.in_home(tmp_path) as book:
        with pytest.raises(ReputationError):
            book.record_many([("ok", Event.SUCCESS), ("", Event.SUCCESS)])
        with pytest.raises(ReputationError):
            book.record("x" * 500, Event.FAILURE)
        with pytest.raises(ValueError):
            book.record("ok", "lied-a-bit")  # type: ignore[arg-type]
        assert book.standings() == {}
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "reputation.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(ReputationError):
        Reputation.in_home(tmp_path / "other")


def test_latency_against_claims():
    claims = {"claimed_tokens_per_s": 90.0, "claimed_ttft_ms": 40.0}
    assert not slower_than_claimed(**claims, tokens=64, observed_tokens_per_s=45.0, observed_ttft_ms=300.0)
    assert slower_than_claimed(**claims, tokens=64, observed_tokens_per_s=20.0, observed_ttft_ms=50.0)
    assert slower_than_claimed(**claims, tokens=4, observed_tokens_per_s=90.0, observed_ttft_ms=2000.0)
    # Too few tokens to judge speed, a queued wait, or no claim at all: not slow.
    assert not slower_than_claimed(**claims, tokens=4, observed_tokens_per_s=1.0, observed_ttft_ms=None)
    assert not slower_than_claimed(0.0, 0.0, tokens=64, observed_tokens_per_s=1.0, observed_ttft_ms=9e6)


def test_kill_9_mid_write_leaves_a_consistent_file(tmp_path):
    command = [sys.executable, "-m", "tests.trust._writer", str(tmp_path)]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as writer:
        assert writer.stdout is not None
        committed = 0
        try:
            while committed < 3000:  # kill it mid-stream, whatever it is doing at that moment
                line = writer.stdout.readline()
                assert line, "the writer stopped on its own"
                committed = int(line)
            os.kill(writer.pid, signal.SIGKILL)
        finally:
            writer.kill()  # leaving the block closes its pipe and reaps it
    assert writer.returncode == -signal.SIGKILL
    with Reputation.in_home(tmp_path, half_life_s=60.0) as book:
        assert book.check() == []
        logged = (
            sqlite3.connect(tmp_path / "reputation.sqlite")
            .execute("SELECT COUNT(*) FROM events")
            .fetchone()[0]
        )
        assert logged >= committed and logged % 3 == 0  # every vote whole, or not at all
        before = book.standings()
        book.record("12D3KooWpeer0", Event.SUCCESS)  # still writable
        assert book.check() == []
        assert set(book.standings()) == set(before)
