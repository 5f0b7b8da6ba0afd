"""Liveness of the peers a process is using: the SWIM core (`dinet.overlay.swim`) over `/dinet/swim/1`.

    membership = Membership(host, on_died=..., on_revived=..., on_rtt=...)  # serves /dinet/swim/1
    async with trio.open_nursery() as nursery:
        await nursery.start(membership.run)
        membership.track(peer_id)     # a peer we serve or use; untrack(peer_id) when done

Each period costs one or two pings (a small stream each), whatever the number of peers
tracked; a peer that stops answering is suspected, then declared dead (`on_died`); a
message from it later brings it back (`on_revived`). Round trips measured by direct pings
go to `on_rtt` and `host.note_rtt`.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable

import trio

from dinet.errors import DinetError, PeerError, WireError
from dinet.overlay.swim import Action, Died, News, Ping, PingReq, Revived, Suspected, Swim
from dinet.p2p.host import PeerHost
from dinet.p2p.streams import FramedStream, Stream
from dinet.wire.ids import PeerId
from dinet.wire.membership import (
    MAX_SWIM_FRAME,
    SWIM_PROTOCOL,
    NewsItem,
    SwimAck,
    SwimNack,
    SwimPing,
    SwimPingReq,
    decode_swim_answer,
    decode_swim_request,
)

logger = logging.getLogger(__name__)

REQUEST_WAIT_S = 5.0  # how long a handler waits for the request frame of a stream
MAX_FORWARDS = 8  # pings sent for others at once; more ping_reqs get a nack
# A peer that pinged us this many periods ago still watches us. It pings each member it
# tracks once a round, in an order shuffled every round: one tracking 8 (its neighbours
# and relays) pings us at least every 15 periods.
WATCHED_FOR_PERIODS = 15


def new_swim(
    peer_id: PeerId,
    *,
    period_s: float = 2.0,
    ack_timeout_s: float = 0.8,
    indirect_k: int = 3,
    suspicion_periods: int = 3,
) -> Swim:
    """A core for `peer_id`, its incarnation seeded by the clock: a restart outranks what
    peers said about the process before it."""
    return Swim(
        peer_id,
        rng=random.Random(),
        period_s=period_s,
        ack_timeout_s=ack_timeout_s,
        indirect_k=indirect_k,
        suspicion_periods=suspicion_periods,
        incarnation=int(time.time()),
    )


def _noop(peer_id: PeerId) -> None:
    pass


def _no_rtt(peer_id: PeerId, rtt_ms: float) -> None:
    pass


class Membership:
    """Drives a `Swim` core with `host`: carries out its pings, serves peers' pings."""

    def __init__(
        self,
        host: PeerHost,
        core: Swim | None = None,
        *,
        on_died: Callable[[PeerId], None] = _noop,
        on_revived: Callable[[PeerId], None] = _noop,
        on_suspected: Callable[[PeerId], None] = _noop,
        on_rtt: Callable[[PeerId, float], None] = _no_rtt,
    ) -> None:
        self.host = host
        self.core = core if core is not None else new_swim(host.peer_id)
        self._on_died = on_died
        self._on_revived = on_revived
        self._on_suspected = on_suspected
        self._on_rtt = on_rtt
        self._wake = trio.Event()
        self._forwards = trio.CapacityLimiter(MAX_FORWARDS)
        # pings and ping_reqs sent, acks and relayed acks received, pings answered and
        # forwarded for others, streams refused
        self.counts: Counter[str] = Counter()
        self._pinged_by: dict[PeerId, float] = {}  # when each peer last pinged us
        host.set_handler(SWIM_PROTOCOL, self.handle)

    # --- the members ---

    def track(self, peer_id: PeerId) -> None:
        self.core.track(peer_id, trio.current_time())
        self._wake.set()

    def untrack(self, peer_id: PeerId) -> None:
        self.core.untrack(peer_id)

    def is_dead(self, peer_id: PeerId) -> bool:
        return self.core.state_of(peer_id) == "dead"

    def watchers(self, limit: int) -> set[PeerId]:
        """The peers watching us: those that pinged us in the last few periods, the `limit`
        most recent. Watching is mutual this way: a peer that keeps us as its neighbour is
        kept by us too, rather than trimmed and dialed again at its next probe."""
        since = trio.current_time() - WATCHED_FOR_PERIODS * self.core.period_s
        self._pinged_by = {p: at for p, at in self._pinged_by.items() if at >= since}
        recent = sorted(self._pinged_by, key=self._pinged_by.__getitem__, reverse=True)
        return set(recent[:limit])

    # --- probing ---

    async def run(
        self,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,  # type: ignore[name-defined]
    ) -> None:
        """Forever: tick the core when it has work, and carry out its actions."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                for action in self.core.tick(trio.current_time()):
                    self._carry(nursery, action)
                at = self.core.next_tick_at()
                with trio.move_on_at(at if at is not None else trio.current_time() + 3600):
                    await self._wake.wait()
                self._wake = trio.Event()

    def _carry(self, nursery: trio.Nursery, action: Action) -> None:
        if isinstance(action, Ping):
            nursery.start_soon(self._ping, action)
        elif isinstance(action, PingReq):
            nursery.start_soon(self._ping_req, action)
        elif isinstance(action, Suspected):
            logger.info("peer %s is suspect: it missed a probe", action.peer)
            self._on_suspected(PeerId(action.peer))
        elif isinstance(action, Died):
            logger.info("peer %s is dead: it answered no probe while suspect", action.peer)
            self._on_died(PeerId(action.peer))
        elif isinstance(action, Revived):
            logger.info("peer %s answers again", action.peer)
            self._on_revived(PeerId(action.peer))

    async def _ping(self, action: Ping) -> None:
        target = PeerId(action.target)
        request = SwimPing(
            probe_id=action.probe_id, incarnation=self.core.incarnation, news=_wire(action.news)
        )
        self.counts["pings"] += 1
        start = time.perf_counter()
        # A late ack still proves the peer alive: wait a whole period for it.
        answer = await self._exchange(target, request, self.core.period_s)
        if not isinstance(answer, SwimAck):
            return
        rtt_ms = (time.perf_counter() - start) * 1e3
        self.counts["acks"] += 1
        self.core.on_ack(trio.current_time(), action.probe_id, target, _core(answer.news), answer.incarnation)
        self.host.note_rtt(target, rtt_ms)
        self._on_rtt(target, rtt_ms)
        self._wake.set()

    async def _ping_req(self, action: PingReq) -> None:
        via = PeerId(action.via)
        request = SwimPingReq(
            probe_id=action.probe_id,
            target=action.target,
            incarnation=self.core.incarnation,
            news=_wire(action.news),
        )
        self.counts["ping_reqs"] += 1
        answer = await self._exchange(via, request, self.core.period_s)
        if isinstance(answer, SwimAck):
            self.counts["indirect_acks"] += 1
            self.core.on_indirect_ack(trio.current_time(), action.probe_id, via, _core(answer.news))
            self._wake.set()

    async def _exchange(
        self, peer_id: PeerId, request: SwimPing | SwimPingReq, timeout: float
    ) -> SwimAck | SwimNack | None:
        """One request and its answer on a new stream; None if none came in time (or a bad one)."""
        deadline = trio.current_time() + timeout
        try:
            with trio.fail_at(deadline):
                stream = await self.host.open_stream(peer_id, SWIM_PROTOCOL, timeout)
        except (trio.TooSlowError, DinetError) as exc:
            logger.debug("no %s stream to %s: %s", request.kind, peer_id, exc)
            return None
        framed = FramedStream(stream, MAX_SWIM_FRAME)
        try:
            with trio.fail_at(deadline):
                await framed.send(request)
                payload = await framed.receive()
            if payload is None:
                raise PeerError("closed the stream without an answer")
            answer = decode_swim_answer(payload)
        except (trio.TooSlowError, DinetError) as exc:  # late, a broken stream, a bad answer
            logger.debug("%s to %s failed: %s", request.kind, peer_id, exc or "no answer in time")
            await framed.reset()
            return None
        await framed.close()
        if answer.probe_id != request.probe_id:
            logger.debug("%s answered probe %d, not %d", peer_id, answer.probe_id, request.probe_id)
            return None
        return answer

    # --- serving peers ---

    async def handle(self, stream: Stream) -> None:
        """One ping or ping_req from a peer; a malformed or late one resets the stream."""
        framed = FramedStream(stream, MAX_SWIM_FRAME)
        peer = stream.remote_peer
        try:
            with trio.fail_after(REQUEST_WAIT_S):
                payload = await framed.receive()
            if payload is None:
                return
            request = decode_swim_request(payload)
        except (trio.TooSlowError, WireError, PeerError) as exc:
            logger.debug("refused a %s stream from %s: %s", SWIM_PROTOCOL, peer, exc)
            self.counts["refused"] += 1
            await framed.reset()
            return
        now = trio.current_time()
        answer: SwimAck | SwimNack
        if isinstance(request, SwimPing):
            self.counts["answered"] += 1
            self._pinged_by[peer] = now
            news = self.core.on_ping(now, peer, _core(request.news), request.incarnation)
            answer = SwimAck(probe_id=request.probe_id, incarnation=self.core.incarnation, news=_wire(news))
        else:
            self.counts["forwarded"] += 1
            answer = await self._forward(peer, request)
        self._wake.set()
        try:
            await framed.send(answer)
            await framed.close()
        except PeerError as exc:
            logger.debug("could not answer %s: %s", peer, exc)

    async def _forward(self, peer: PeerId, request: SwimPingReq) -> SwimAck | SwimNack:
        """Ping `request.target` for `peer`: its ack (our news on it), or a nack."""
        nack = SwimNack(probe_id=request.probe_id)
        target = PeerId(request.target)
        if target in (peer, self.host.peer_id):
            return nack
        news = self.core.on_ping_req(trio.current_time(), peer, target, _core(request.news))
        if not self.host.is_connected(target):
            return nack  # never a dial to a stranger for someone else's probe: our links are bounded
        try:
            self._forwards.acquire_nowait()
        except trio.WouldBlock:
            return nack  # busy pinging for others: the asker has other helpers
        try:
            ping = SwimPing(probe_id=request.probe_id, incarnation=self.core.incarnation, news=_wire(news))
            # The asker's window is what remains of its period after its own ack timeout.
            timeout = max(self.core.period_s - self.core.ack_timeout_s, 0.1)
            answer = await self._exchange(target, ping, timeout)
        finally:
            self._forwards.release()
        if not isinstance(answer, SwimAck):
            return nack
        relayed = self.core.on_forwarded_ack(
            trio.current_time(), target, _core(answer.news), answer.incarnation
        )
        return SwimAck(probe_id=request.probe_id, incarnation=self.core.incarnation, news=_wire(relayed))


def _wire(news: tuple[News, ...]) -> tuple[NewsItem, ...]:
    return tuple(NewsItem(peer_id=n.peer_id, state=n.state, incarnation=n.incarnation) for n in news)


def _core(news: tuple[NewsItem, ...]) -> tuple[News, ...]:
    return tuple(News(n.peer_id, n.state, n.incarnation) for n in news)
