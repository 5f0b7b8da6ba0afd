"""A gateway over a real network whose page also sees a FAKE directory of many peers
(`_fake_network`), with a few chains among them noted as used: for the page's test at
scale. Run as its own process; prints {"url": ...} once it listens, serves until killed.

    python tests/gateway/_fake_network_gateway.py HOME BOOTSTRAP API_KEY PEERS
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import trio
from _fake_network import CHAIN_MODEL, FakeDirectory, FakeNetworkView, fake_chains, fake_peers
from hypercorn.config import Config
from hypercorn.trio import serve
from pydantic import SecretStr

from dinet.client.network import open_network
from dinet.config import GatewaySettings
from dinet.gateway import build_app

CHAINS = 3


async def main(home: Path, bootstrap: str, api_key: str, count: int) -> None:
    settings = GatewaySettings(home=home, bootstrap=[bootstrap], api_key=SecretStr(api_key), mdns=False)
    peers = fake_peers(count)
    fake = FakeDirectory(peers)
    async with open_network(settings) as network:
        view = FakeNetworkView(network, settings.bootstrap, fake)
        await view.refresh()
        app = build_app(view, settings)
        for chain in fake_chains(peers, CHAINS):
            app.state.gateway.chains.used(time.time(), CHAIN_MODEL, chain)
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(view.keep_fresh, settings.refresh_s)
            binds: list[str] = await nursery.start(serve, app, config)
            print(json.dumps({"url": binds[0]}), flush=True)


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]))
