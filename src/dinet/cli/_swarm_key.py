"""`din swarm-key`: the pre-shared key of a private swarm."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dinet.cli._common import fail, print_json
from dinet.errors import ConfigError
from dinet.p2p.pnet import write_new_swarm_key

app = typer.Typer(help="Private swarms: make the key every member holds.", no_args_is_help=True)


@app.command()
def new(
    path: Annotated[Path, typer.Argument(help="Where to write it (an existing file is never replaced)")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of text")] = False,
) -> None:
    """Write a fresh swarm key (libp2p's swarm.key format, mode 0600)."""
    try:
        key = write_new_swarm_key(path)
    except ConfigError as exc:
        fail(str(exc))
        return
    if json_out:
        print_json({"path": str(path), "fingerprint": key.fingerprint})
    else:
        typer.echo(f"wrote {path} (fingerprint {key.fingerprint})")
        typer.echo("give it to every member, over a channel you trust; start each with --swarm-key FILE")
