"""A stage's session table: KV bytes bounded by evicting idle sessions, least recently used first."""

from __future__ import annotations

from dataclasses import dataclass

from dinet.node._sessions import SessionTable


@dataclass
class FakeSession:
    nbytes: int


def test_over_budget_the_least_recently_used_idle_session_goes():
    table: SessionTable[FakeSession] = SessionTable(max_bytes=100, idle_s=60)
    for i, sid in enumerate(["a", "b", "c"]):
        table.add(sid, FakeSession(30), now=i)
    assert table.begin("a", now=3) is not None  # a is now the most recently used
    table.end("a", now=3)
    grown = table.begin("c", now=4)
    assert grown is not None
    grown.nbytes = 50  # c's cache grew in its step: 30 + 30 + 50 > 100
    evicted = table.end("c", now=4)
    assert evicted == ["b"]
    assert "b" not in table and "a" in table and "c" in table
    assert table.begin("b", now=5) is None
    assert "evicted" in table.why_missing("b")
    assert "no session" in table.why_missing("never-opened")


def test_a_busy_session_is_never_evicted():
    table: SessionTable[FakeSession] = SessionTable(max_bytes=50, idle_s=1)
    table.add("busy", FakeSession(40), now=0)
    table.add("other", FakeSession(40), now=1)
    assert table.begin("busy", now=2) is not None
    assert table.end("other", now=2) == []  # over budget, but the only idle one is the caller's
    assert table.expire(now=100) == ["other"]  # idle too long; busy stays, whatever its age
    assert "busy" in table
    assert "idle" in table.why_missing("other")


def test_reopening_an_evicted_id_makes_it_live_again():
    table: SessionTable[FakeSession] = SessionTable(max_bytes=10, idle_s=5)
    table.add("s", FakeSession(1), now=0)
    table.expire(now=10)
    assert "s" not in table
    table.add("s", FakeSession(1), now=11)
    assert table.begin("s", now=11) is not None
    assert table.total_bytes == 1
