"""`din node`."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import trio
import typer

from dinet._config_layers import resolve
from dinet.cli._common import fail, print_json, run
from dinet.cli._gateway import describe
from dinet.config import GatewaySettings, NodeSettings
from dinet.errors import ConfigError
from dinet.gateway import BrowserEntry, GatewayStarted, serve_gateway
from dinet.node.service import NodeStarted, serve_node
from dinet.p2p.websockets import is_websocket


def run_node(settings: NodeSettings, *, config: Path | None, json_out: bool) -> None:
    if settings.liar is not None:
        typer.secho(
            f"WARNING: this node LIES ({settings.liar}): for tests of verification only", fg="red", err=True
        )
    if settings.fake_engine:
        typer.secho(
            "WARNING: this node serves a FAKE model (fake-echo): for benchmarks only", fg="red", err=True
        )
    # Checked before the node starts, so a bad API setting fails at once.
    api = None if settings.api_port is None else beside_node(settings, config)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            started: NodeStarted = await nursery.start(serve_node, settings)
            gateway: GatewayStarted | None = None
            if api is not None:
                tcp = [a for a in started.addrs if not is_websocket(a)]  # the gateway dials TCP only
                own = [a for a in tcp if a.startswith("/ip4/127.0.0.1/")] or tcp
                joined = api.model_copy(update={"bootstrap": own[:1]})
                beside = partial(
                    serve_gateway,
                    node_reachability=lambda: started.live().reachability,
                    node_browser=lambda: browser_entry(started.live(), relays=settings.relay),
                )
                gateway = await nursery.start(beside, joined)
            if json_out:
                print_json({**started.record(), **({"api": gateway.url} if gateway else {})})
            else:
                typer.echo(f"peer id  {started.peer_id}")
                for line in _describe_model(started, auto=settings.serve == "auto"):
                    typer.echo(line)
                reach = started.reachability
                typer.echo(f"reach    {reach.state} ({reach.reason})")
                for addr in started.addrs:
                    typer.echo(f"listen   {addr}")
                if gateway is not None:
                    for line in describe(gateway):
                        typer.echo(line)
                typer.echo(f"home     {settings.home}   (Ctrl-C to stop)")

    run(main)


def browser_entry(node: NodeStarted, *, relays: bool) -> BrowserEntry:
    """Where a browser tab dials `node`: the WebSocket addresses it was announced at
    (a name its certificate is for), then those it listens on."""
    addrs = [a for a in (*node.advertised, *node.addrs) if is_websocket(a)]
    return BrowserEntry(node.peer_id, tuple(dict.fromkeys(addrs)), relays)


def _describe_model(started: NodeStarted, *, auto: bool = False) -> list[str]:
    if auto:
        return ["model    chosen by demand (--serve auto): see the log and the node file"]
    if started.model_hash is None or started.engine is None:
        return ["model    none (--no-model: this node joins and routes, and serves no model)"]
    lines = [f"model    {started.model_id} ({started.model_hash[:16]}…)"]
    if not started.engine.get("serving", True):
        lines.append(f"NOT SERVED  {started.engine.get('error')}")
    for also in started.also_served:  # --also-serve
        lines.append(f"also     {also['model_id']} ({str(also['model_hash'])[:16]}…)")
        engine = also["engine"]
        if isinstance(engine, dict) and not engine.get("serving", True):
            lines.append(f"NOT SERVED  {engine.get('error')}")
    sandbox = started.engine.get("sandbox")
    lines += [
        f"sandbox  warning: {w}" for w in (sandbox.get("warnings", ()) if isinstance(sandbox, dict) else ())
    ]
    return lines


def beside_node(settings: NodeSettings, config: Path | None) -> GatewaySettings:
    """The API a node serves itself (api_port): the node's address, port and key, and the
    client settings (timeouts, verify_rate, ...) a gateway would read."""
    own: dict[str, object] = {
        "host": settings.api_host,
        "port": settings.api_port,
        "home": settings.home,
        "mdns": False,
    }
    if settings.api_key is not None:
        own["api_key"] = settings.api_key
    names = {"host": "--api-host", "port": "--api-port", "api_key": "--api-key"}
    try:
        return resolve(GatewaySettings, flags=own, config=config, flag_names=names).settings
    except ConfigError as exc:
        fail(str(exc))
        raise  # unreachable: fail() exits
