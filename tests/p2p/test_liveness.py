"""Liveness rounds leave out the peers a session is open with."""

from __future__ import annotations

from types import SimpleNamespace

import trio
import trio.testing

from dinet.p2p.liveness import LivenessWatch


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
