"""Peers to probe, in a process of their own: `python -m tests.p2p.swim_peers COUNT [--manifests]`.

Runs COUNT real hosts on loopback, each serving `/dinet/swim/1` (a Membership tracking
nobody) and, with --manifests, `/dinet/manifest/1` (its own signed manifest, which is
what the old LivenessWatch asks for). Prints one JSON line, {"addrs": [...]}, one
address per host, then serves until killed.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import AsyncExitStack

import trio
from tests.helpers import make_manifest

from dinet.p2p.host import PeerHost, open_host
from dinet.p2p.membership import Membership
from dinet.p2p.streams import FramedStream, Handler, Stream
from dinet.wire.ids import MANIFEST_PROTOCOL
from dinet.wire.keys import SigningKey
from dinet.wire.manifest import ManifestList, sign_manifest


def _manifest_server(host: PeerHost) -> Handler:
    async def serve(stream: Stream) -> None:
        framed = FramedStream(stream)
        if await framed.receive() is None:
            return
        manifest = make_manifest(host.key, addrs=tuple(host.full_addrs()[:1]))
        await framed.send(ManifestList(manifests=(sign_manifest(manifest, host.key),)))
        await framed.close()

    return serve


async def main(count: int, manifests: bool) -> None:
    async with AsyncExitStack() as stack:
        hosts = [
            await stack.enter_async_context(open_host(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"]))
            for _ in range(count)
        ]
        nursery = await stack.enter_async_context(trio.open_nursery())
        for host in hosts:
            await nursery.start(Membership(host).run)
            if manifests:
                host.set_handler(MANIFEST_PROTOCOL, _manifest_server(host))
        print(json.dumps({"addrs": [h.full_addrs()[0] for h in hosts]}), flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("count", type=int)
    parser.add_argument("--manifests", action="store_true")
    args = parser.parse_args()
    try:
        trio.run(main, args.count, args.manifests)
    except KeyboardInterrupt:
        sys.exit(0)
