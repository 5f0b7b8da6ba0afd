"""The `din` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dinet.cli import _ask, _chain, _demo, _gateway, _ledger, _model, _node, _pay, _private
from dinet.cli._common import fail, setup_logging
from dinet.cli._settings import with_settings
from dinet.config import ClientSettings, GatewaySettings, NodeSettings

app = typer.Typer(
    help="dinet: a decentralized inference network. Serve a model, ask the network, watch it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text")]
Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging (-vv: all)")]

app.add_typer(_model.app, name="model")
app.add_typer(_ledger.app, name="ledger")
app.add_typer(_pay.app, name="pay")
app.add_typer(_chain.app, name="chain")
app.add_typer(_private.app, name="swarm-key")
app.command("peer-id")(_private.peer_id)


@app.command()
@with_settings(NodeSettings)
def node(settings: NodeSettings, config: Path | None, json_out: Json = False, verbose: Verbose = 0) -> None:
    """Serve a model on the network (or, with --no-model, only join and route) until Ctrl-C or SIGTERM."""
    setup_logging(verbose)
    _node.run_node(settings, config=config, json_out=json_out)


@app.command()
@with_settings(GatewaySettings)
def gateway(settings: GatewaySettings, json_out: Json = False, verbose: Verbose = 0) -> None:
    """Serve an OpenAI-compatible API (/v1) and a web page (/) in front of the network."""
    setup_logging(verbose)
    _gateway.run_gateway(settings, json_out=json_out)


@app.command()
@with_settings(ClientSettings)
def ask(
    settings: ClientSettings,
    prompt: Annotated[str | None, typer.Argument(help="The question", show_default=False)] = None,
    model: Annotated[str | None, typer.Option(help="Model id")] = None,
    model_hash: Annotated[str | None, typer.Option(help="Exact model version (hash)")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate")] = 128,
    temperature: Annotated[float, typer.Option(help="0 for greedy")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed")] = 0,
    deadline: Annotated[
        float | None,
        typer.Option(
            help="Answer within this many seconds: peers that can go first, max-tokens capped to fit"
        ),
    ] = None,
    policy: Annotated[str, typer.Option(help="Peer choice: latency, throughput or cost")] = "latency",
    sharded: Annotated[
        bool, typer.Option(help="Answer through a chain of pipeline stages even if a whole node could")
    ] = False,
    draft: Annotated[
        str,
        typer.Option(
            help="How a chain guesses tokens to check several in one trip: lookup, model (the first "
            "stage's draft model) or none"
        ),
    ] = "none",
    audit_stages: Annotated[
        float,
        typer.Option(help="Share of chain answers whose stages are replayed on other holders (0 to 1)"),
    ] = 0.0,
    replicas: Annotated[
        int, typer.Option(help="Ask this many peers at once and keep the majority's answer")
    ] = 1,
    verify: Annotated[
        bool, typer.Option("--verify", help="Have the answer re-scored by another peer (--verify-rate 1)")
    ] = False,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw", help="Send the text as a raw prompt to continue, not as a chat message (base models)"
        ),
    ] = False,
    peer: Annotated[
        list[str] | None,
        typer.Option("--peer", help="Ask only this peer id (repeat for several); verifiers may be others"),
    ] = None,
    json_out: Json = False,
    verbose: Verbose = 0,
) -> None:
    """Ask the network one question (or, with --raw, continue a text) and stream the answer."""
    setup_logging(verbose)
    if prompt is None:  # optional only so that `din ask --print-config` needs none
        fail('no question: din ask "…"')
        return
    if verify:
        settings = settings.model_copy(update={"verify_rate": 1.0})
    _ask.run_ask(
        prompt,
        settings,
        model=model,
        model_hash=model_hash,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        deadline=deadline,
        policy=policy,
        json_out=json_out,
        sharded=sharded,
        draft=draft,
        audit_stages=audit_stages,
        replicas=replicas,
        raw=raw,
        only_peers=peer,
    )


@app.command()
@with_settings(ClientSettings)
def chat(
    settings: ClientSettings,
    model: Annotated[str | None, typer.Option(help="Model id")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens per answer")] = 256,
    temperature: Annotated[float, typer.Option(help="0 for greedy")] = 0.0,
    seed: Annotated[int, typer.Option(help="Sampling seed")] = 0,
    json_out: Json = False,
    verbose: Verbose = 0,
) -> None:
    """Talk with the network; the conversation is kept until you leave (Ctrl-D)."""
    setup_logging(verbose)
    _ask.run_chat(
        settings, model=model, max_tokens=max_tokens, temperature=temperature, seed=seed, json_out=json_out
    )


@app.command()
@with_settings(ClientSettings)
def peers(
    settings: ClientSettings,
    wait: Annotated[float, typer.Option(help="Seconds to spend discovering")] = 3.0,
    json_out: Json = False,
    verbose: Verbose = 0,
) -> None:
    """List the peers found and what their manifests say."""
    setup_logging(verbose)
    _ask.run_peers(settings, wait=wait, json_out=json_out)


@app.command()
def demo(
    nodes: Annotated[int, typer.Option(help="How many node processes to start")] = 3,
    prompt: Annotated[str, typer.Option(help="The question to send")] = (
        "In two sentences, why is sharing computers between neighbours a good idea?"
    ),
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate")] = 96,
    json_out: Json = False,
    verbose: Verbose = 0,
) -> None:
    """Start a local mesh of nodes, ask it one real question, then stop it."""
    setup_logging(verbose)
    _demo.run_demo(nodes=nodes, prompt=prompt, max_tokens=max_tokens, json_out=json_out)


def main() -> None:
    app()
