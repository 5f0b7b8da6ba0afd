"""`din model`: the chunk store in a home directory, and pulling models from peers."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated

import trio
import typer

from dinet.cli._common import fail, print_json, run, setup_logging
from dinet.cli._publish import publish, versions
from dinet.config import default_home
from dinet.errors import DinetError, ModelNotFound, PullFailed
from dinet.models.catalog import DEFAULT_MODEL_ID, resolve_model
from dinet.models.fetch import PullReport, Swarm, open_swarm, pull_layers, pull_model
from dinet.models.layers import LayerSpan
from dinet.models.store import ModelStore, StoredModel
from dinet.p2p.gate import peer_gate
from dinet.p2p.identity import load_or_create_identity
from dinet.wire.ids import ModelHash, PeerId

app = typer.Typer(
    help="Models in the local store: import, list, check, remove, pull from peers; publish versions.",
    no_args_is_help=True,
)
app.command()(publish)
app.command()(versions)

Home = Annotated[Path | None, typer.Option(help="State directory (holds models/)")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text")]
Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging")]
Ref = Annotated[str, typer.Argument(help="Model id, hash, or hash prefix")]


def _store(home: Path | None, *, auto_import: bool = True) -> tuple[ModelStore, Path]:
    """The store, with the default model imported on first use."""
    home = home or default_home()
    store = ModelStore(home)
    if auto_import and not store.root.exists():
        try:
            default = resolve_model(None)
        except ModelNotFound:
            return store, home  # no default package here: an empty store is fine
        store.import_file(default.path, load_or_create_identity(home), model_id=DEFAULT_MODEL_ID)
    return store, home


def _describe(m: StoredModel) -> dict[str, object]:
    card = m.card
    return {
        "model_id": card.model_id,
        "version": card.version,
        "model_hash": card.model_hash,
        "complete": m.complete,
        "file_size": card.file_size,
        "sha256": card.sha256,
        "chunks": len(card.chunk_hashes),
        "chunk_size": card.chunk_size,
        "gguf": card.gguf.model_dump(),
        "publisher": card.publisher,
        "created_at": card.created_at,
        "path": str(m.readable_path),
        "layers": list(m.layers) if m.layers is not None else None,
    }


def _guard(fn):  # type: ignore[no-untyped-def]
    """Our errors become one line on stderr and exit code 1."""
    try:
        return fn()
    except DinetError as exc:
        fail(str(exc))


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="A GGUF file")],
    model_id: Annotated[str | None, typer.Option("--id", help="Model id (default: file name)")] = None,
    version: Annotated[str | None, typer.Option(help="Version label (default: hash prefix)")] = None,
    home: Home = None,
    json_out: Json = False,
) -> None:
    """Chunk, hash and copy a GGUF file into the store, with a model card signed by this home's key."""
    store, home = _store(home, auto_import=False)
    key = load_or_create_identity(home)
    if not path.is_file():
        fail(f"no file at {path}")
    m = _guard(lambda: store.import_file(path, key, model_id=model_id, version=version))
    if json_out:
        print_json(_describe(m))
    else:
        typer.echo(f"imported {m.card.model_id} {m.model_hash} ({len(m.card.chunk_hashes)} chunks)")


@app.command("list")
def list_(home: Home = None, json_out: Json = False) -> None:
    """Every model in the store."""
    store, _ = _store(home)
    models = _guard(store.models)
    if json_out:
        print_json([_describe(m) for m in models])
        return
    for m in models:
        state = "" if m.complete else f"  (layers {m.layers[0]}:{m.layers[1]})" if m.layers else "  (partial)"
        card = m.card
        typer.echo(
            f"{card.model_id:32} {m.model_hash[:16]}  {card.file_size / 1e6:8.1f} MB  "
            f"{card.gguf.quantization:8} {card.version}{state}"
        )


@app.command()
def info(ref: Ref, home: Home = None, json_out: Json = False) -> None:
    """A stored model's model card: its chunks, hashes and GGUF metadata."""
    store, _ = _store(home)
    m = _guard(lambda: store.find(ref, complete=False))
    data = _describe(m)
    if json_out:
        print_json(data)
    else:
        for key, value in data.items():
            typer.echo(f"{key:11} {value}")


@app.command()
def verify(
    ref: Annotated[str | None, typer.Argument(help="Model id or hash (default: all)")] = None,
    home: Home = None,
    json_out: Json = False,
) -> None:
    """Re-hash every chunk (a stage's: those it holds); exit 1 if any do not match."""
    store, _ = _store(home)
    if ref:
        models = [_guard(lambda: store.find(ref, complete=False))]
        if not models[0].complete and models[0].layers is None:
            fail(f"{ref} is a pull that has not finished: pull it again")
    else:
        models = [m for m in store.models() if m.complete or m.layers is not None]
    results = [
        {
            "model_id": m.card.model_id,
            "model_hash": m.model_hash,
            "bad_chunks": store.bad_kept_chunks(m),
        }
        for m in models
    ]
    if json_out:
        print_json(results)
    else:
        for r in results:
            bad = r["bad_chunks"]
            typer.echo(
                f"{r['model_id']} {str(r['model_hash'])[:16]}  " + (f"BAD chunks {bad}" if bad else "ok")
            )
    if any(r["bad_chunks"] for r in results):
        raise typer.Exit(1)


@app.command()
def rm(ref: Ref, home: Home = None, json_out: Json = False) -> None:
    """Remove a model (complete or partial) from the store."""
    store, _ = _store(home, auto_import=False)
    m = _guard(lambda: store.find(ref, complete=False))
    store.remove(m)
    if json_out:
        print_json({"removed": m.model_hash, "model_id": m.card.model_id})
    else:
        typer.echo(f"removed {m.card.model_id} {m.model_hash}")


@app.command()
def pull(
    ref: Annotated[str, typer.Argument(help="Model hash, or a model id that peers offer")],
    bootstrap: Annotated[list[str] | None, typer.Option("--bootstrap", "-b", help="Peer multiaddr")] = None,
    home: Home = None,
    timeout: Annotated[float, typer.Option(help="Seconds to look for holders")] = 15.0,
    max_rate: Annotated[float | None, typer.Option(help="Limit in MB/s")] = None,
    layers: Annotated[
        str | None,
        typer.Option(help="Only what a pipeline stage of blocks START:STOP needs (`din node --layers`)"),
    ] = None,
    mdns: Annotated[bool, typer.Option("--mdns/--no-mdns", help="Discover peers by mDNS")] = True,
    swarm_key: Annotated[
        Path | None, typer.Option(envvar="DINET_SWARM_KEY", help="The private swarm's swarm.key file")
    ] = None,
    allow_peers: Annotated[
        Path | None, typer.Option(envvar="DINET_ALLOW_PEERS", help="Speak only to the peer ids in this file")
    ] = None,
    hole_punching: Annotated[
        bool,
        typer.Option("--hole-punching/--no-hole-punching", help="Upgrade relayed connections to direct ones"),
    ] = True,
    json_out: Json = False,
    verbose: Verbose = 0,
) -> None:
    """Fetch a model from peers (DHT provider records), checking every chunk; resumable."""
    setup_logging(verbose)
    store, home = _store(home, auto_import=False)
    span = _guard(lambda: LayerSpan.parse(layers)) if layers is not None else None

    async def main() -> PullReport:
        gate = peer_gate(swarm_key, allow_peers)
        async with open_swarm(
            home, bootstrap or [], mdns=mdns, gate=gate, hole_punching=hole_punching
        ) as swarm:
            model_hash, peers = await _find(swarm, ref, timeout)
            rate = max_rate * 1e6 if max_rate else None
            with _progress(json_out) as progress:
                if span is not None:
                    return await pull_layers(
                        swarm.host,
                        store,
                        model_hash,
                        peers,
                        span.start,
                        span.stop,
                        progress=progress,
                        max_rate=rate,
                    )
                return await pull_model(
                    swarm.host, store, model_hash, peers, progress=progress, max_rate=rate
                )

    report: PullReport = run(main)
    if json_out:
        print_json(report.as_dict())
    else:
        mb = report.fetched_bytes / 1e6
        typer.echo(
            f"{report.model_id} {report.model_hash} -> {report.path}\n"
            f"fetched {report.fetched_chunks} chunks ({mb:.1f} MB) from {len(report.peers)} peers, "
            f"reused {report.reused_chunks}, {report.seconds:.1f} s"
        )


async def _find(swarm: Swarm, ref: str, timeout: float) -> tuple[ModelHash, list[PeerId]]:
    model_hash = ModelHash(ref) if re.match(r"^[0-9a-f]{64}$", ref) else None
    peers: list[PeerId] = []
    with trio.move_on_after(timeout):
        while True:
            if model_hash is None:
                hashes = await swarm.model_hashes(ref)
                model_hash = hashes[0] if hashes else None
            if model_hash is not None:
                peers = await swarm.holders(model_hash)
                if peers:
                    await trio.sleep(0.5)  # late DHT answers: look once more
                    peers = list(dict.fromkeys(peers + await swarm.holders(model_hash)))
                    return model_hash, peers
            await trio.sleep(0.5)
    raise PullFailed(f"no peer holds {ref!r} (looked for {timeout:g} s)")


class _progress:
    """A rich progress bar on a terminal; JSON lines on stderr with --json."""

    def __init__(self, json_out: bool) -> None:
        self._json = json_out
        self._bar = None
        self._last = -1

    def __enter__(self):  # type: ignore[no-untyped-def]
        if not self._json and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(
                "pulling",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("pull", total=None)
        return self.update

    def update(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total)
        elif self._json:
            percent = done * 100 // max(total, 1)
            if percent != self._last:
                self._last = percent
                sys.stderr.write(
                    json.dumps({"event": "progress", "done_bytes": done, "total_bytes": total}) + "\n"
                )
                sys.stderr.flush()

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
