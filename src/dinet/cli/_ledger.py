"""`din ledger`: balances, receipts, verification and export of a home's ledger."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dinet.cli._common import fail, print_json
from dinet.config import default_home
from dinet.errors import DinetError
from dinet.ledger import LEDGER_FILE, Ledger, StoredReceipt, Summary
from dinet.p2p.identity import CLIENT_IDENTITY, NODE_IDENTITY, load_or_create_identity, peer_id_of
from dinet.wire.ids import PeerId

app = typer.Typer(
    help="The receipts this home signed or countersigned, and the balances they prove.",
    invoke_without_command=True,
    no_args_is_help=False,
)

Home = Annotated[Path | None, typer.Option(help="State directory holding ledger.sqlite")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text")]


def _open(home: Path | None) -> tuple[Ledger, list[PeerId]]:
    home = home or default_home()
    if not (home / LEDGER_FILE).exists():
        fail(f"no ledger in {home}: it is created by the first answer served or received")
    try:
        return Ledger(home / LEDGER_FILE), _identities(home)
    except DinetError as exc:
        fail(str(exc))
        raise  # unreachable: fail exits


def _identities(home: Path) -> list[PeerId]:
    """The peer ids this home answers for: its node and client keys, where they exist."""
    return [
        peer_id_of(load_or_create_identity(home, name))
        for name in (NODE_IDENTITY, CLIENT_IDENTITY)
        if (home / name).exists()
    ]


@app.callback()
def balance(ctx: typer.Context, home: Home = None, json_out: Json = False) -> None:
    """Balance, earned and spent credits, by peer (with no sub-command)."""
    if ctx.invoked_subcommand is not None:
        return
    ledger, me = _open(home)
    with ledger:
        summary = ledger.summary(me)
    if json_out:
        print_json(_summary_json(summary))
        return
    typer.echo(f"identities  {', '.join(me) or '(none)'}")
    typer.echo(
        f"balance     {summary.balance:g}   earned {summary.earned:g}   spent {summary.spent:g}"
        f"   ({summary.receipts} receipts)"
    )
    if summary.peers:
        table = Table()
        for column in ("peer", "earned", "spent", "balance", "receipts"):
            table.add_column(column)
        for p in summary.peers:
            table.add_row(p.peer_id, f"{p.earned:g}", f"{p.spent:g}", f"{p.balance:g}", str(p.receipts))
        Console().print(table)


def _summary_json(summary: Summary) -> dict[str, object]:
    return {
        "identities": list(summary.me),
        "balance": summary.balance,
        "earned": summary.earned,
        "spent": summary.spent,
        "receipts": summary.receipts,
        "peers": [
            {
                "peer_id": p.peer_id,
                "earned": p.earned,
                "spent": p.spent,
                "balance": p.balance,
                "receipts": p.receipts,
            }
            for p in summary.peers
        ],
    }


def receipt_json(stored: StoredReceipt) -> dict[str, object]:
    return {
        "receipt_id": stored.receipt.receipt_id,
        **stored.body.model_dump(mode="json"),
        "recorded_at": stored.recorded_at,
    }


@app.command()
def receipts(
    home: Home = None,
    limit: Annotated[int | None, typer.Option(help="Only the latest N")] = None,
    json_out: Json = False,
) -> None:
    """List the receipts, oldest first."""
    ledger, _ = _open(home)
    with ledger:
        rows = list(ledger.receipts(limit))
    if json_out:
        print_json([receipt_json(r) for r in rows])
        return
    table = Table(title=f"{len(rows)} receipts")
    for column in ("time", "request", "node", "client", "prompt", "completion", "amount"):
        table.add_column(column)
    for r in rows:
        b = r.body
        table.add_row(
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b.issued_at)),
            b.request_id[:12],
            b.node[-8:],
            b.client[-8:],
            str(b.prompt_tokens),
            str(b.completion_tokens),
            f"{b.amount:g}",
        )
    Console().print(table)


@app.command()
def verify(home: Home = None, json_out: Json = False) -> None:
    """Re-check every signature, every amount and the balances; exit 1 on any problem."""
    ledger, me = _open(home)
    started = time.perf_counter()
    with ledger:
        report = ledger.verify(me)
    seconds = time.perf_counter() - started
    if json_out:
        print_json(
            {
                "ok": report.ok,
                "receipts": report.receipts,
                "earned": report.earned,
                "spent": report.spent,
                "problems": report.problems,
                "seconds": round(seconds, 3),
            }
        )
    else:
        for problem in report.problems:
            typer.echo(f"problem: {problem}", err=True)
        verdict = "ok" if report.ok else f"{len(report.problems)} problems"
        typer.echo(
            f"{verdict}: {report.receipts} receipts verified in {seconds:.2f} s; "
            f"earned {report.earned:g}, spent {report.spent:g}"
        )
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def export(home: Home = None) -> None:
    """Every receipt as one JSON line, with both signatures, for anyone to audit."""
    ledger, _ = _open(home)
    with ledger:
        for r in ledger.receipts():
            line = {"receipt_id": r.receipt.receipt_id, **r.receipt.model_dump(mode="json")}
            sys.stdout.write(json.dumps(line) + "\n")
