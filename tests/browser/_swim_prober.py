"""A py-libp2p node, as its own process: it dials a browser tab through the tab's relay and
probes it over `/dinet/swim/1` with dinet's own messages: a ping carrying news that the tab
is suspect, a ping_req, and a frame that is no request. Prints one JSON line: the answers."""

from __future__ import annotations

import json
import sys

import trio

from dinet.errors import DinetError
from dinet.p2p.host import PeerHost, open_host
from dinet.p2p.reach import ReachConfig
from dinet.p2p.streams import FramedStream
from dinet.wire.keys import SigningKey
from dinet.wire.membership import (
    MAX_SWIM_FRAME,
    SWIM_PROTOCOL,
    NewsItem,
    SwimPing,
    SwimPingReq,
    decode_swim_answer,
)
from dinet.wire.messages import Message


async def exchange(host: PeerHost, tab: str, request: Message | bytes) -> dict[str, object]:
    """The tab's answer to one request, or how the stream ended without one."""
    framed = FramedStream(await host.open_stream(tab, SWIM_PROTOCOL, 20), MAX_SWIM_FRAME)
    try:
        with trio.fail_after(20):
            if isinstance(request, bytes):
                await framed.send_payload(request)
            else:
                await framed.send(request)
            payload = await framed.receive()
    except DinetError as exc:
        return {"ended": type(exc).__name__}
    if payload is None:
        return {"ended": "closed"}
    return decode_swim_answer(payload).model_dump()


async def main(circuit: str) -> None:
    reach = ReachConfig(hole_punching=False)  # a tab cannot be dialed directly
    async with open_host(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], reach=reach) as host:
        tab = await host.dial(circuit, timeout=20)
        suspected = NewsItem(peer_id=tab, state="suspect", incarnation=2**62)  # past 2^53: exact
        ping = SwimPing(probe_id=2**62, incarnation=1, news=(suspected,))
        ping_req = SwimPingReq(probe_id=7, target=host.peer_id, incarnation=1)
        report = {
            "ping": await exchange(host, tab, ping),
            "ping_req": await exchange(host, tab, ping_req),
            "garbage": await exchange(host, tab, b'{"kind": "swim_pong"}'),
        }
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
