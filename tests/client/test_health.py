"""The client's book of each peer: its own requests there, as an advert saw them."""

from __future__ import annotations

import time

from dinet.client.health import HealthBook


def test_our_own_requests_are_counted_as_they_were_when_an_advert_was_issued():
    record = HealthBook().get("p")
    before = time.time()
    first = record.sent()
    during = time.time()
    record.done(first)
    assert record.in_flight == 0
    # An advert issued while our request ran counts it; one issued before or after does not.
    assert record.ours_running_at(during) == 1
    assert record.ours_running_at(before - 1) == 0 and record.ours_running_at(time.time() + 1) == 0
    second = record.sent()
    assert record.in_flight == 1 and record.ours_running_at(time.time()) == 1
    record.done(second)
