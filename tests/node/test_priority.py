"""Tit-for-tat on a real busy node: a peer that served this home is served before one in debt."""

from __future__ import annotations

import trio
from tests.helpers import chat, open_infer, raw_host
from tests.ledger._receipts import make_receipt

from dinet.ledger import Ledger
from dinet.node.local_mesh import start_node
from dinet.p2p.identity import load_or_create_identity
from dinet.wire.keys import SigningKey
from dinet.wire.messages import EndFrame, InferRequest, QueuedFrame, TokenFrame, decode_reply


async def send(host, addr: str, name: str, max_tokens: int):
    framed = await open_infer(host, addr)
    params = chat("Tell me a long story.", max_tokens=max_tokens)
    await framed.send(InferRequest(request_id=name, params=params))
    return framed


async def until(framed, kind) -> None:
    with trio.fail_after(60):
        while not isinstance(decode_reply(await framed.receive()), kind):
            pass


async def test_a_contributor_is_served_before_a_peer_in_debt(tmp_path):
    home = tmp_path / "node"
    node_key = load_or_create_identity(home)
    contributor, debtor, stranger = (SigningKey.generate() for _ in range(3))
    with Ledger.in_home(home) as ledger:
        ledger.record(make_receipt(contributor, node_key, completion=4, price=1.0))  # it served us
        ledger.record(make_receipt(node_key, debtor, completion=8, price=1.0))  # it used us, beyond
    node = start_node(home, extra_args=["--price", "1", "--max-concurrent", "1", "--free-allowance", "2"])
    finished: list[str] = []
    try:
        async with raw_host(stranger) as s, raw_host(debtor) as d, raw_host(contributor) as c:
            blocker = await send(s, node.addr, "blocker", 160)
            await until(blocker, TokenFrame)  # the only slot is taken
            late = await send(d, node.addr, "debtor", 4)
            await until(late, QueuedFrame)  # the debtor waits first...
            early = await send(c, node.addr, "contributor", 4)
            await until(early, QueuedFrame)  # ...then the contributor arrives

            async def finish(framed, name: str) -> None:
                await until(framed, EndFrame)
                finished.append(name)

            async with trio.open_nursery() as nursery:
                for framed, name in ((blocker, "blocker"), (late, "debtor"), (early, "contributor")):
                    nursery.start_soon(finish, framed, name)
    finally:
        node.stop()
    assert finished == ["blocker", "contributor", "debtor"]
