"""`din gateway`, and the gateway that `din node --api-port` runs beside its node."""

from __future__ import annotations

from pathlib import Path

import trio
import typer
from pydantic import ValidationError

from dinet.cli._common import fail, print_json, run
from dinet.config import GatewaySettings
from dinet.gateway import GatewayStarted, serve_gateway


def gateway_settings(**given: object) -> GatewaySettings:
    """Settings from the flags that were given (None: not given); exits with the reason if invalid."""
    fields = {k: v for k, v in given.items() if v is not None}
    try:
        return GatewaySettings.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        fail(f"invalid setting {where}: {first['msg']}" if where else str(first["msg"]).removeprefix(
            "Value error, "))
        raise  # unreachable: fail() exits


def describe(started: GatewayStarted) -> list[str]:
    return [
        f"gateway  {started.url}/v1   (OpenAI-compatible API)",
        f"page     {started.url}/",
        f"metrics  {started.url}/metrics",
    ]


def run_gateway(
    *,
    host: str,
    port: int,
    home: Path | None,
    bootstrap: list[str],
    api_key: str | None,
    timeout: float,
    mdns: bool,
    json_out: bool,
    verify_rate: float | None = None,
) -> None:
    settings = gateway_settings(
        host=host, port=port, home=home, bootstrap=bootstrap, api_key=api_key,
        discover_timeout_s=timeout, mdns=mdns, verify_rate=verify_rate,
    )

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
