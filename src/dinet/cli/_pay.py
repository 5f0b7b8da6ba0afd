"""`din pay`: the payment channels of this home, on the chain at --chain-rpc.

A client opens a channel to a node (`open`), adds to its deposit (`top-up`), and takes
back what is left once the channel has expired (`reclaim`). A node closes a channel
with the highest voucher its ledger holds (`close`). `status` shows both sides: per
channel, the deposit, what the receipts on it sum to, what is vouched, and what the
chain has paid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from dinet.cli._common import fail, print_json, run
from dinet.cli._settings import with_settings
from dinet.client.network import open_network
from dinet.client.payments import channel_statuses
from dinet.config import ClientSettings
from dinet.errors import DinetError
from dinet.ledger import Ledger
from dinet.p2p.identity import CLIENT_IDENTITY, NODE_IDENTITY, load_or_create_identity
from dinet.settle import channels_at, load_or_create_chain_key
from dinet.settle.voucher import Voucher
from dinet.wire.ids import PeerId

if TYPE_CHECKING:  # web3 takes a second to import: every `din` command would wait for it
    from dinet.settle.chain import Channels

app = typer.Typer(
    help="Payment channels: open, top up, close, reclaim, and their status.", no_args_is_help=True
)

Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text")]
Channel = Annotated[str, typer.Argument(help="The channel's id (0x...)")]
T = TypeVar("T")


def _chain(settings: ClientSettings) -> Channels:
    if settings.chain_rpc is None or settings.channel_contract is None:
        fail("name the chain: --chain-rpc URL and --channel-contract ADDRESS (or set them in the config)")
    assert settings.chain_rpc is not None and settings.channel_contract is not None
    return channels_at(settings.chain_rpc, settings.channel_contract, settings.home)


def _guarded(action: Callable[[], T]) -> T:
    try:
        return action()
    except DinetError as exc:
        fail(str(exc))
        raise  # unreachable: fail exits


@app.command("open")
@with_settings(ClientSettings)
def open_channel(
    settings: ClientSettings,
    peer: Annotated[str, typer.Argument(help="The node's peer id")],
    deposit: Annotated[int, typer.Option(help="Deposit, in wei")],
    json_out: Json = False,
) -> None:
    """Open a channel to a node that takes them (its manifest names the chain and its address)."""

    async def open_it() -> str:
        async with open_network(settings) as network:
            await network.discover(None, None, timeout=settings.discover_timeout_s)
            manifest = network.directory.get(PeerId(peer))
            if manifest is None:
                fail(f"peer {peer} was not found within {settings.discover_timeout_s:g} s")
            assert manifest is not None
            if manifest.payment is None:
                fail(f"peer {peer} takes no payment channels")
            book = network.payments
            assert book is not None and manifest.payment is not None
            if not book.pays_on(manifest.payment):
                terms = manifest.payment
                fail(f"peer {peer} is paid on chain {terms.chain_id}, contract {terms.contract}")
            return await book.open(PeerId(peer), manifest.payment, deposit)

    _chain(settings)  # a clear error before joining the network
    channel: str = run(open_it)  # DinetError: a clear line, exit 1
    if json_out:
        print_json({"channel": channel, "peer": peer, "deposit": deposit})
    else:
        typer.echo(f"opened channel {channel} to {peer} with {deposit} wei")


@app.command("top-up")
@with_settings(ClientSettings)
def top_up(
    settings: ClientSettings,
    channel: Channel,
    amount: Annotated[int, typer.Option(help="Wei to add to the deposit")],
    json_out: Json = False,
) -> None:
    """Add to a channel's deposit."""
    chain = _chain(settings)
    _guarded(lambda: chain.top_up(channel, amount))
    state = _guarded(lambda: chain.state(channel))
    if json_out:
        print_json({"channel": channel, "deposit": state.deposit})
    else:
        typer.echo(f"channel {channel} now holds {state.deposit} wei")


@app.command()
@with_settings(ClientSettings)
def close(
    settings: ClientSettings,
    channel: Annotated[
        str | None, typer.Argument(help="The channel's id; all open ones paying this node if left out")
    ] = None,
    json_out: Json = False,
) -> None:
    """Close channels paying this home's node with their highest vouchers: the node gets
    what they promise, the client the rest of the deposit."""
    chain = _chain(settings)
    with Ledger.in_home(settings.home) as ledger:
        node = _identity(settings, NODE_IDENTITY)
        if node is None:
            fail(f"{settings.home} holds no node: only a node closes the channels that pay it")
        records = [r for r in ledger.channels(payee=node) if not r.closed and channel in (None, r.channel)]
        if channel is not None and not records:
            fail(f"channel {channel} does not pay this home's node, or is closed")
        closed = []
        for record in records:
            held = ledger.voucher(record.channel)
            voucher = None if held is None else Voucher(held.channel, held.amount, held.signature)
            paid = _guarded(lambda: chain.close(voucher, record.channel))  # noqa: B023 (called at once)
            ledger.mark_closed(record.channel)
            closed.append(
                {"channel": record.channel, "paid_now": paid, "vouched": 0 if held is None else held.amount}
            )
    if json_out:
        print_json({"closed": closed})
    else:
        for c in closed:
            typer.echo(f"closed {c['channel']}: {c['paid_now']} wei paid now, {c['vouched']} vouched in all")


@app.command()
@with_settings(ClientSettings)
def reclaim(settings: ClientSettings, channel: Channel, json_out: Json = False) -> None:
    """Take back what is left of an expired channel's deposit (the node did not close it in time)."""
    chain = _chain(settings)
    back = _guarded(lambda: chain.reclaim(channel))
    with Ledger.in_home(settings.home) as ledger:
        ledger.mark_closed(channel)
    if json_out:
        print_json({"channel": channel, "reclaimed": back})
    else:
        typer.echo(f"reclaimed {back} wei from channel {channel}")


@app.command()
@with_settings(ClientSettings)
def status(settings: ClientSettings, json_out: Json = False) -> None:
    """This home's channels: as a client, deposit and spend; as a node, earnings settled and pending."""
    chain = _chain(settings)
    me = {_identity(settings, CLIENT_IDENTITY), _identity(settings, NODE_IDENTITY)}
    address = load_or_create_chain_key(settings.home).address
    with Ledger.in_home(settings.home) as ledger:
        rows = _guarded(lambda: channel_statuses(ledger, chain, me))
    if json_out:
        print_json({"address": address, "channels": rows})
        return
    typer.echo(f"account {address}")
    for row in rows:
        typer.echo(
            f"{row['role']:6} {row['channel']}  peer {row['peer']}  deposit {row['deposit']}  "
            f"owed {row['owed']}  vouched {row['vouched']}  paid on chain {row['paid']}"
            f"{'  closed' if row['closed'] else ''}"
        )


def _identity(settings: ClientSettings, name: str) -> PeerId | None:
    """The home's node or client peer id, if it has that identity."""
    if not (settings.home / name).exists():
        return None
    return load_or_create_identity(settings.home, name).peer_id
