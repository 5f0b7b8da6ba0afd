"""A dinet host as a program, for reach tests that need hosts in other namespaces but no model.

    python -m tests.reach._dialback_peer serve IP          two hosts on IP; prints their addresses
    python -m tests.reach._dialback_peer check PORT [--upnp] ADDR...
                                                           a host on 0.0.0.0:PORT that dials ADDRs and
                                                           asks them to dial it back; prints each new
                                                           reachability as a JSON line

Both run until their standard input closes.
"""

from __future__ import annotations

import json
import sys
from contextlib import AsyncExitStack

import trio

from dinet.p2p.host import build_host, open_host
from dinet.wire.keys import SigningKey


async def serve(ip: str) -> None:
    async with AsyncExitStack() as stack:
        hosts = [
            await stack.enter_async_context(open_host(SigningKey.generate(), [f"/ip4/{ip}/tcp/0"]))
            for _ in "12"
        ]
        print(json.dumps([h.full_addrs()[0] for h in hosts]), flush=True)
        await until_stdin_closes()


async def check(port: int, upnp: bool, servers: list[str]) -> None:
    host = build_host(SigningKey.generate())
    async with (
        host.running([f"/ip4/0.0.0.0/tcp/{port}"], check_reach=True, upnp=upnp),
        trio.open_nursery() as nursery,
    ):
        for addr in servers:
            await host.dial(addr)

        async def report() -> None:
            last = None
            while True:
                now = host.reachability().as_dict()
                if now != last:
                    print(json.dumps(now), flush=True)
                    last = now
                await trio.sleep(0.1)

        nursery.start_soon(report)
        await until_stdin_closes()
        nursery.cancel_scope.cancel()


async def until_stdin_closes() -> None:
    await trio.to_thread.run_sync(sys.stdin.read)


def main(argv: list[str]) -> None:
    if argv[0] == "serve":
        trio.run(serve, argv[1])
    else:
        trio.run(check, int(argv[1]), "--upnp" in argv, [a for a in argv[2:] if a != "--upnp"])


if __name__ == "__main__":
    main(sys.argv[1:])
