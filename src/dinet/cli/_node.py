"""`din node`."""

from __future__ import annotations

from pathlib import Path

import trio
import typer
from pydantic import ValidationError

from dinet.cli._common import fail, print_json, run
from dinet.cli._gateway import describe, gateway_settings
from dinet.config import LIAR_REFUSED, NodeSettings
from dinet.engine.testing.liar import liars_allowed
from dinet.gateway import GatewayStarted, serve_gateway
from dinet.node.service import NodeStarted, serve_node


def run_node(
    *,
    model: str | None,
    listen: list[str] | None,
    bootstrap: list[str],
    home: Path | None,
    threads: int,
    region: str,
    price: float,
    max_concurrent: int,
    max_queue: int,
    memory_mb: int | None,
    mdns: bool,
    json_out: bool,
    api_port: int | None = None,
    api_host: str = "127.0.0.1",
    api_key: str | None = None,
    prompt_price: float = 0.0,
    priority: bool = True,
    free_allowance: float = 1.0,
    limits: dict[str, float | int | str | None] | None = None,
    sandbox: bool = True,
    liar: str | None = None,
) -> None:
    if liar is not None and not liars_allowed():
        fail(LIAR_REFUSED)
    given: dict[str, object] = {
        "bootstrap": bootstrap, "threads": threads, "region": region, "price": price,
        "prompt_price": prompt_price, "priority": priority, "free_allowance": free_allowance,
        "mdns": mdns, "model": model, "memory_mb": memory_mb,
        "max_concurrent": max_concurrent, "max_queue": max_queue, "sandbox": sandbox,
    }
    given.update({k: v for k, v in (limits or {}).items() if v is not None})  # unset: the defaults
    if liar is not None:
        given["liar"] = liar
    if listen:
        given["listen"] = listen
    if home:
        given["home"] = home
    try:
        settings = NodeSettings.model_validate(given)
    except ValidationError as exc:
        fail(f"invalid setting {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}")
    if settings.liar is not None:
        typer.secho(f"WARNING: this node LIES ({settings.liar}): for tests of verification only",
                    fg="red", err=True)
    # Checked before the node starts, so a bad API setting fails at once.
    api = None if api_port is None else gateway_settings(
        host=api_host, port=api_port, home=settings.home, api_key=api_key, mdns=False,
    )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            started: NodeStarted = await nursery.start(serve_node, settings)
            gateway: GatewayStarted | None = None
            if api is not None:
                own = [a for a in started.addrs if a.startswith("/ip4/127.0.0.1/")] or started.addrs
                joined = api.model_copy(update={"bootstrap": own[:1]})
                gateway = await nursery.start(serve_gateway, joined)
            if json_out:
                print_json(
                    {"peer_id": started.peer_id, "addrs": started.addrs,
                     "model_id": started.model_id, "model_hash": started.model_hash,
                     "engine": started.engine, **({"api": gateway.url} if gateway else {})}
                )
            else:
                typer.echo(f"peer id  {started.peer_id}")
                typer.echo(f"model    {started.model_id} ({started.model_hash[:16]}…)")
                if not started.engine.get("serving", True):
                    typer.echo(f"NOT SERVED  {started.engine.get('error')}")
                sandbox = started.engine.get("sandbox")
                for warning in sandbox.get("warnings", ()) if isinstance(sandbox, dict) else ():
                    typer.echo(f"sandbox  warning: {warning}")
                for addr in started.addrs:
                    typer.echo(f"listen   {addr}")
                if gateway is not None:
                    for line in describe(gateway):
                        typer.echo(line)
                typer.echo(f"home     {settings.home}   (Ctrl-C to stop)")

    run(main)
