"""A second py-libp2p node, as its own process: it dials a browser tab through the relay
the tab holds a slot on (`/p2p-circuit`) and asks it for manifests with dinet's own
client code. Prints one JSON line: the tab's id, how it is connected, the manifests."""

from __future__ import annotations

import json
import sys

import trio

from dinet.p2p.discovery import fetch_manifests
from dinet.p2p.host import open_host
from dinet.p2p.reach import ReachConfig
from dinet.wire.keys import SigningKey


async def main(circuit: str) -> None:
    reach = ReachConfig(hole_punching=False)  # a tab cannot be dialed directly
    async with open_host(SigningKey.generate(), ["/ip4/127.0.0.1/tcp/0"], reach=reach) as host:
        tab = await host.dial(circuit, timeout=20)
        manifests, _ = await fetch_manifests(host, tab, timeout=20)
        report = {"tab": tab, "link": host.link_kind(tab), "manifests": [m.model_dump() for m in manifests]}
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
