"""`din gateway`, and the gateway that `din node --api-port` runs beside its node."""

from __future__ import annotations

import trio
import typer

from dinet.cli._common import print_json, run
from dinet.config import GatewaySettings
from dinet.gateway import GatewayStarted, serve_gateway


def describe(started: GatewayStarted) -> list[str]:
    return [
        f"gateway  {started.url}/v1   (OpenAI-compatible API)",
        f"page     {started.url}/",
        f"metrics  {started.url}/metrics",
    ]


def run_gateway(settings: GatewaySettings, *, json_out: bool) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            started: GatewayStarted = await nursery.start(serve_gateway, settings)
            if json_out:
                print_json({"url": started.url, "peer_id": started.peer_id})
            else:
                for line in describe(started):
                    typer.echo(line)
                typer.echo("Ctrl-C to stop")

    run(main)
