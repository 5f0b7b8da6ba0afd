"""`din node`."""

from __future__ import annotations

from pathlib import Path

import trio
import typer
from pydantic import ValidationError

from dinet.cli._common import fail, print_json, run
from dinet.config import NodeSettings
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
    memory_mb: int | None,
    mdns: bool,
    json_out: bool,
) -> None:
    given: dict[str, object] = {
        "bootstrap": bootstrap, "threads": threads, "region": region, "price": price,
        "mdns": mdns, "model": model, "memory_mb": memory_mb,
    }
    if listen:
        given["listen"] = listen
    if home:
        given["home"] = home
    try:
        settings = NodeSettings.model_validate(given)
    except ValidationError as exc:
        fail(f"invalid setting {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            started: NodeStarted = await nursery.start(serve_node, settings)
            if json_out:
                print_json(
                    {"peer_id": started.peer_id, "addrs": started.addrs,
                     "model_id": started.model_id, "model_hash": started.model_hash}
                )
            else:
                typer.echo(f"peer id  {started.peer_id}")
                typer.echo(f"model    {started.model_id} ({started.model_hash[:16]}…)")
                for addr in started.addrs:
                    typer.echo(f"listen   {addr}")
                typer.echo(f"home     {settings.home}   (Ctrl-C to stop)")

    run(main)
