"""A streaming client as a program, for failover tests whose client sits in a lab namespace.

    python -m tests.reach._failover_client --home DIR --bootstrap ADDR... --prompt TEXT
                                           --max-tokens N --peers K

Prints one JSON line per event, flushed, so that the test driving it can act mid-answer:
  {"event": "ready", "rtt_ms": {peer: ms}}          K capable peers found, each timed
  {"event": "attempt", "peer_id": P}                 the client asks P
  {"event": "token", "index": i, "text": t, "peer_id": P, "at": unix time}
  {"event": "answer", "text", "peer_id", "peers_tried"}
  {"event": "reference", "text", "peer_id"}          the tokens sent before the peer that
                                                     finished took over, then what it gives
                                                     when asked again to resume after them
  {"event": "error", "type", "message"}              and exit code 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import trio
from tests.helpers import resumed_text

from dinet.client.ask import Answer, ask
from dinet.client.network import Network, open_network
from dinet.config import ClientSettings
from dinet.errors import DinetError
from dinet.wire.ids import PeerId
from dinet.wire.messages import ChatMessage, GenerationParams

FIND_PEERS_S = 60.0


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def wait_for_peers(network: Network, count: int) -> None:
    with trio.fail_after(FIND_PEERS_S):
        while True:
            found = {p.peer_id for p in network.candidates(None, None)}
            if len(found) >= count and found <= network.rtt_ms.keys():
                return
            await trio.sleep(0.2)


async def main(args: argparse.Namespace) -> None:
    settings = ClientSettings(home=Path(args.home), bootstrap=args.bootstrap, mdns=False)
    params = GenerationParams(
        messages=(ChatMessage(role="user", content=args.prompt),), max_tokens=args.max_tokens
    )
    async with open_network(settings) as network:
        await wait_for_peers(network, args.peers)
        emit("ready", rtt_ms=dict(network.rtt_ms))
        attempts: list[PeerId] = []

        def attempt(peer_id: PeerId) -> None:
            attempts.append(peer_id)
            emit("attempt", peer_id=peer_id)

        answer: Answer | None = None
        sent: list[tuple[PeerId, int, str]] = []
        async for event in ask(network, params, on_attempt=attempt):
            if isinstance(event, Answer):
                answer = event
            else:
                sent.append((attempts[-1], event.token_id, event.text))
                emit("token", index=event.index, text=event.text, peer_id=attempts[-1], at=time.time())
        assert answer is not None
        emit("answer", text=answer.text, peer_id=answer.peer_id, peers_tried=list(answer.peers_tried))
        before = [(token, piece) for peer, token, piece in sent if peer != answer.peer_id]
        taken_over = await resumed_text(network.host, answer.peer_id, params, [t for t, _ in before])
        emit("reference", text="".join(piece for _, piece in before) + taken_over, peer_id=answer.peer_id)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", required=True)
    parser.add_argument("--bootstrap", action="append", required=True)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-tokens", type=int, required=True)
    parser.add_argument("--peers", type=int, default=2)
    try:
        trio.run(main, parser.parse_args())
    except DinetError as exc:
        emit("error", type=type(exc).__name__, message=str(exc))
        sys.exit(1)
