"""`din swarm-key` (a private swarm's pre-shared key) and `din peer-id` (what an allowlist lists)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dinet.cli._common import fail, print_json
from dinet.config import default_home
from dinet.errors import ConfigError, DinetError
from dinet.p2p.identity import CLIENT_IDENTITY, NODE_IDENTITY, load_or_create_identity
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


def peer_id(
    home: Annotated[Path | None, typer.Option(help="State directory holding the identities")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of text")] = False,
) -> None:
    """This home's peer ids, as `din node` and `din ask` show themselves (made if missing)."""
    home = home or default_home()
    try:
        ids = {
            role: load_or_create_identity(home, name).peer_id
            for role, name in (("node", NODE_IDENTITY), ("client", CLIENT_IDENTITY))
        }
    except DinetError as exc:
        fail(str(exc))
        return
    if json_out:
        print_json(ids)
    else:
        for role, found in ids.items():
            typer.echo(f"{role:7}{found}")
