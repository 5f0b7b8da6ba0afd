"""`din chain`: the EVM side of settlement. `din chain devnet` runs a local dev chain."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dinet.cli._common import fail, print_json
from dinet.config import default_home
from dinet.errors import DinetError

app = typer.Typer(help="Payment channels on an EVM chain.", no_args_is_help=True)

Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text")]


@app.command()
def devnet(
    port: Annotated[int, typer.Option(help="RPC port on 127.0.0.1 (0: a free one)")] = 0,
    accounts: Annotated[int, typer.Option(help="Funded accounts")] = 10,
    json_out: Json = False,
) -> None:
    """Run a local EVM dev chain (ganache) with the channels contract deployed, until
    Ctrl-C or SIGTERM. Its accounts' keys are public dev keys: never send them real value."""
    from dinet.settle.devnet import Devnet  # web3 loads only for this command

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        chain = Devnet(port=port, accounts=accounts).start()
    except DinetError as exc:
        fail(str(exc))
        return
    try:
        info = {
            "rpc_url": chain.rpc_url,
            "chain_id": chain.chain_id,
            "contract": chain.contract,
            "accounts": [{"address": k.address, "private_key": k.hex} for k in chain.accounts],
            "dev_keys": True,
        }
        if json_out:
            print_json(info)
        else:
            _print(info)
        stop.wait()
    finally:
        chain.stop()


def _print(info: dict[str, object]) -> None:
    console = Console(highlight=False)
    console.print(f"RPC       {info['rpc_url']}")
    console.print(f"chain id  {info['chain_id']}")
    console.print(f"contract  {info['contract']}  (dinet channels)")
    console.print("[bold]Funded accounts: DEV KEYS, public, never send them real value[/bold]")
    accounts = info["accounts"]
    assert isinstance(accounts, list)
    for i, account in enumerate(accounts):
        console.print(f"{i:>3}  {account['address']}  {account['private_key']}", soft_wrap=True)
    console.print("Running until Ctrl-C.")


@app.command()
def key(
    home: Annotated[Path | None, typer.Option(help="State directory holding chain.key")] = None,
    import_hex: Annotated[
        str | None, typer.Option("--import", help="Replace the home's key with this one (0x + 64 hex)")
    ] = None,
    json_out: Json = False,
) -> None:
    """The address of this home's chain account (created on first use), which pays and is
    paid through channels; with --import, take an existing key (a devnet's dev key, say)."""
    from dinet.home_crypto import write_secret
    from dinet.settle.keys import CHAIN_KEY, ChainKey, load_or_create_chain_key

    home = home or default_home()
    try:
        if import_hex is not None:
            home.mkdir(parents=True, exist_ok=True)
            write_secret(home / CHAIN_KEY, ChainKey.from_hex(import_hex).private_key)
        address = load_or_create_chain_key(home).address
    except (DinetError, ValueError) as exc:
        fail(str(exc))
        return
    if json_out:
        print_json({"address": address, "home": str(home)})
    else:
        typer.echo(address)
