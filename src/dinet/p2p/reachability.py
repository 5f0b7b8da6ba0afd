"""Whether this node can be reached, decided from what peers said when asked to dial it back.

Sans-IO: `DialBacks` takes the answers (with the time as an argument) and `decide()`s;
`dinet.p2p.addresses` asks the peers. Nothing here looks at address ranges: the
lab's 198.18.0.0/15 and a company's 10/8 look "private" to Python yet can be
the public side of a network; only a dial-back tells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dinet.wire.ids import PeerId

ReachState = Literal["public", "private", "unknown"]

# Distinct peers that must agree before an address counts as reachable or not.
AGREE = 2


@dataclass(frozen=True)
class Reachability:
    """What this node knows of how others reach it.

    `addrs`: its addresses that peers dialed back, or the operator announced.
    `relays`: peers that hold a relay reservation for it.
    """

    state: ReachState
    reason: str
    addrs: tuple[str, ...] = ()
    relays: tuple[PeerId, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state,
            "reason": self.reason,
            "addrs": list(self.addrs),
            "relays": list(self.relays),
        }


NOT_CHECKED = Reachability("unknown", "not checked: this host does not ask peers to dial it back")


@dataclass(frozen=True)
class _Answer:
    reached: bool
    at: float


class DialBacks:
    """Peers' answers, per address of ours: did a fresh connection from them reach it?

    Refusals (a peer that will not dial, a rate limit, no answer) are not answers and
    are never recorded. An answer older than `fresh_for` seconds no longer counts.
    """

    def __init__(self, fresh_for: float) -> None:
        self.fresh_for = fresh_for
        self._answers: dict[str, dict[PeerId, _Answer]] = {}

    def record(self, addr: str, peer: PeerId, reached: bool, now: float) -> None:
        self._answers.setdefault(addr, {})[peer] = _Answer(reached, now)

    def keep_only(self, addrs: set[str]) -> None:
        """Forget answers about addresses we no longer have."""
        self.forget(set(self._answers) - addrs)

    def forget(self, addrs: set[str]) -> None:
        """Forget answers about addresses that may answer differently now."""
        for addr in addrs:
            self._answers.pop(addr, None)

    def answered(self, addr: str, now: float, within: float | None = None) -> set[PeerId]:
        """Peers that answered about `addr` (in the last `within` seconds, if given)."""
        recent = self._peers(addr, now, reached=None)
        if within is None:
            return recent
        return {p for p in recent if now - self._answers[addr][p].at <= within}

    def reached(self, addr: str, now: float) -> set[PeerId]:
        return self._peers(addr, now, reached=True)

    def failed(self, addr: str, now: float) -> set[PeerId]:
        return self._peers(addr, now, reached=False)

    def _peers(self, addr: str, now: float, reached: bool | None) -> set[PeerId]:
        return {
            peer
            for peer, answer in self._answers.get(addr, {}).items()
            if now - answer.at <= self.fresh_for and reached in (None, answer.reached)
        }

    def decide(self, candidates: list[str], announced: list[str], peers: int, now: float) -> Reachability:
        """Private when peers saw us at an address they could not dial back; public when
        peers reached us; unknown until AGREE distinct peers agree on one or the other.

        `candidates` are the addresses we ask about (`announced` among them); `peers` is how
        many peers there are to ask. The operator's `announced` addresses are advertised
        whatever the answers (the operator said so); their failures are reported, and make
        the node private only when no other address was dialed back.
        """
        confirmed = tuple(a for a in candidates if len(self.reached(a, now)) >= AGREE)
        addrs = tuple(dict.fromkeys([*confirmed, *announced]))
        refuted = [a for a in candidates if len(self.failed(a, now)) >= AGREE]
        bad_announced = [a for a in refuted if a in announced]
        if len(bad_announced) < len(refuted) or (bad_announced and not confirmed):
            failed = set().union(*(self.failed(a, now) for a in refuted))
            named = ", ".join(f"{a} (announced)" if a in announced else a for a in refuted)
            return Reachability("private", f"{len(failed)} peers could not dial back {named}", addrs)
        note = f"; announced {', '.join(bad_announced)} not dialed back" if bad_announced else ""
        if confirmed:
            reached = set().union(*(self.reached(a, now) for a in confirmed))
            return Reachability(
                "public", f"{len(reached)} peers dialed back {', '.join(confirmed)}{note}", addrs
            )
        if peers < AGREE:
            return Reachability("unknown", f"fewer than {AGREE} peers to ask", addrs)
        answering = set().union(set(), *(self.answered(a, now) for a in candidates))
        told = f"{len(answering)} of {peers} peers answered; {AGREE} must agree"
        return Reachability("unknown", told, addrs)
