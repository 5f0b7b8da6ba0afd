"""Liveness rounds: which peers they probe, and how long they give each."""

from __future__ import annotations

from types import SimpleNamespace

import trio
import trio.testing

from dinet.p2p.liveness import LivenessWatch, _Absent


class _Directory:
    def manifests(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(peer_id="busy-stage"), SimpleNamespace(peer_id="idle-peer")]


def test_a_round_probes_every_peer_but_the_resting_ones() -> None:
    probed: list[str] = []

    async def record(peer_id: str, share: bool) -> None:
        probed.append(peer_id)

    async def main() -> None:
        watch = LivenessWatch(host=None, directory=_Directory(), resting=lambda p: p == "busy-stage")  # type: ignore[arg-type]
        watch._probe_present = record  # type: ignore[method-assign]
        with trio.move_on_after(2.5 * watch.interval):
            await watch.run()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert probed == ["idle-peer"] * 3


class _UnreachableHost:
    """A fake host (named so: these tests are about the watch's timing) that records the
    time limit of every dial asked of it, and never reaches anyone."""

    def __init__(self) -> None:
        self.dial_timeouts: list[float] = []

    async def reach(self, peer_id: str, addrs: object, timeout: float) -> bool:
        self.dial_timeouts.append(timeout)
        return False


def test_an_absent_peer_is_dialed_again_with_the_dial_timeout() -> None:
    """Dialing an absent peer makes a new connection, relayed maybe: seconds over a WAN.
    It once had the probe's limit (1.5 s then), which only loopback and LANs meet."""
    host = _UnreachableHost()

    async def main() -> None:
        watch = LivenessWatch(host=host, directory=_Directory(), timeout=3.0, dial_timeout=12.0)  # type: ignore[arg-type]
        watch.absent["gone"] = _Absent(SimpleNamespace(addrs=("/ip4/192.0.2.1/tcp/1/p2p/gone",)), 0.0)  # type: ignore[arg-type]
        await watch._probe_absent("gone", watch.absent["gone"])  # type: ignore[arg-type]

    trio.run(main)
    assert host.dial_timeouts == [12.0]
