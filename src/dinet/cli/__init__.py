"""The `din` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dinet.cli import _ask, _demo, _gateway, _ledger, _model, _node
from dinet.cli._common import setup_logging

app = typer.Typer(
    help="dinet: a decentralized inference network. Serve a model, ask the network, watch it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

Home = Annotated[Path | None, typer.Option(help="State directory (identity, node.json)")]
Bootstrap = Annotated[
    list[str] | None, typer.Option("--bootstrap", "-b", help="Multiaddr of a peer to join through")
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text")]
Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging (-vv: all)")]
Mdns = Annotated[bool, typer.Option("--mdns/--no-mdns", help="Discover peers on the LAN by mDNS")]
ApiKey = Annotated[
    str | None,
    typer.Option(envvar="DINET_API_KEY", help="Require 'Authorization: Bearer KEY' on the HTTP API"),
]

VerifyRate = Annotated[
    float | None,
    typer.Option(help="Fraction of answers (0-1) re-scored by another peer serving the same model"),
]

app.add_typer(_model.app, name="model")
app.add_typer(_ledger.app, name="ledger")


@app.command()
def node(
    model: Annotated[str | None, typer.Option(help="GGUF path or model id")] = None,
    listen: Annotated[list[str] | None, typer.Option(help="Multiaddr to listen on")] = None,
    bootstrap: Bootstrap = None,
    home: Home = None,
    threads: Annotated[int, typer.Option(help="Compute threads (llama.cpp, or torch in a stage)")] = 2,
    region: Annotated[str, typer.Option(help="Region label for the manifest")] = "local",
    price: Annotated[float, typer.Option(help="Price per completion token, in credits")] = 0.0,
    prompt_price: Annotated[float, typer.Option(help="Price per prompt token, in credits")] = 0.0,
    priority: Annotated[
        bool, typer.Option("--priority/--no-priority", help="Serve waiting peers by standing (tit-for-tat)")
    ] = True,
    free_allowance: Annotated[float, typer.Option(help="Credits of standing a new peer starts with")] = 1.0,
    max_concurrent: Annotated[int, typer.Option(help="Generations at once")] = 1,
    max_queue: Annotated[int, typer.Option(help="Requests waiting beyond those; more get 'busy'")] = 8,
    memory_mb: Annotated[
        int | None, typer.Option(help="Address-space limit of the engine worker, in MiB")
    ] = None,
    sandbox: Annotated[
        bool, typer.Option("--sandbox/--no-sandbox", help="Confine the engine worker (see docs/sandbox.md)")
    ] = True,
    per_peer_rate: Annotated[float | None, typer.Option(help="Requests per second one peer may send")] = None,
    per_peer_burst: Annotated[int | None, typer.Option(help="Requests one peer may send at once")] = None,
    per_peer_concurrency: Annotated[
        int | None, typer.Option(help="Inference streams one peer may have open at once")
    ] = None,
    max_tokens_limit: Annotated[int | None, typer.Option(help="Most tokens one request may ask for")] = None,
    max_prompt_chars: Annotated[
        int | None, typer.Option(help="Most prompt characters in one request")
    ] = None,
    max_request_bytes: Annotated[int | None, typer.Option(help="Largest request frame, in bytes")] = None,
    layers: Annotated[
        str | None, typer.Option(help="Serve only blocks START:STOP (a pipeline stage on /dinet/shard/1)")
    ] = None,
    shard_kv_mb: Annotated[
        float | None, typer.Option(help="With --layers: most MB of KV cache kept for sessions")
    ] = None,
    shard_idle_s: Annotated[
        float | None, typer.Option(help="With --layers: seconds before an unused session is freed")
    ] = None,
    api_port: Annotated[
        int | None, typer.Option(help="Also serve the OpenAI-compatible API and page on this port")
    ] = None,
    api_host: Annotated[str, typer.Option(help="Address the API binds (with --api-port)")] = "127.0.0.1",
    api_key: ApiKey = None,
    liar: Annotated[
        str | None,
        typer.Option(help="TESTING ONLY (needs DINET_ALLOW_LIARS=1): random, corrupt:K or wrong-model:PATH"),
    ] = None,
    mdns: Mdns = True,
    json_out: Json = False,
    verbose: Verbose = 0,
) -> None:
    """Serve a model on the network until Ctrl-C or SIGTERM."""
    setup_logging(verbose)
    _node.run_node(
        model=model, listen=listen, bootstrap=bootstrap or [], home=home, threads=threads,
        region=region, price=price, prompt_price=prompt_price, priority=priority,
        free_allowance=free_allowance, max_concurrent=max_concurrent, max_queue=max_queue,
        memory_mb=memory_mb, mdns=mdns, json_out=json_out, sandbox=sandbox,
        api_port=api_port, api_host=api_host, api_key=api_key,
        limits={
            "per_peer_rate": per_peer_rate, "per_peer_burst": per_peer_burst,
            "per_peer_concurrency": per_peer_concurrency, "max_tokens_limit": max_tokens_limit,
            "max_prompt_chars": max_prompt_chars, "max_request_bytes": max_request_bytes,
            "layers": layers, "shard_kv_mb": shard_kv_mb, "shard_idle_s": shard_idle_s,
        },
        liar=liar,
    )


@app.command()
def gateway(
    port: Annotated[int, typer.Option(help="HTTP port (0: any free port)")] = 8000,
    host: Annotated[str, typer.Option(help="Address to bind; other than loopback needs --api-key")] = (
        "127.0.0.1"
    ),
    home: Home = None,
    bootstrap: Bootstrap = None,
    api_key: ApiKey = None,
    timeout: Annotated[float, typer.Option(help="Seconds to look for peers for a request")] = 10.0,
    verify_rate: VerifyRate = None,
    mdns: Mdns = True,
    json_out: Json = False,
    verbose: Verbose = 0,
) -> None:
    """Serve an OpenAI-compatible API (/v1) and a web page (/) in front of the network."""
    setup_logging(verbose)
    _gateway.run_gateway(
        host=host, port=port, home=home, bootstrap=bootstrap or [], api_key=api_key,
        timeout=timeout, mdns=mdns, json_out=json_out, verify_rate=verify_rate,
    )


@app.command()
def ask(
    prompt: Annotated[str, typer.Argument(help="The question")],
    home: Home = None,
    bootstrap: Bootstrap = None,
    model: Annotated[str | None, typer.Option(help="Model id")] = None,
    model_hash: Annotated[str | None, typer.Option(help="Exact model version (hash)")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate")] = 128,
    temperature: Annotated[float, typer.Option(help="0 for greedy")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed")] = 0,
    timeout: Annotated[float, typer.Option(help="Seconds to look for peers")] = 10.0,
    deadline: Annotated[
        float | None, typer.Option(help="Answer within this many seconds: caps max-tokens by peer speed")
    ] = None,
    policy: Annotated[str, typer.Option(help="Peer choice: latency, throughput or cost")] = "latency",
    max_price: Annotated[
        float | None, typer.Option(help="Most credits per token to pay; dearer peers are never used")
    ] = None,
    sharded: Annotated[
        bool, typer.Option(help="Answer through a chain of pipeline stages even if a whole node could")
    ] = False,
    replicas: Annotated[
        int, typer.Option(help="Ask this many peers at once and keep the majority's answer")
    ] = 1,
    verify: Annotated[
        bool, typer.Option("--verify", help="Have the answer re-scored by another peer (--verify-rate 1)")
    ] = False,
    verify_rate: VerifyRate = None,
    mdns: Mdns = True,
    json_out: Json = False,
    verbose: Verbose = 0,
) -> None:
    """Ask the network one question and stream the answer."""
    setup_logging(verbose)
    _ask.run_ask(
        prompt, home=home, bootstrap=bootstrap or [], model=model, model_hash=model_hash,
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
        timeout=timeout, deadline=deadline, policy=policy, mdns=mdns, json_out=json_out,
        max_price=max_price, sharded=sharded, replicas=replicas,
        verify_rate=1.0 if verify else verify_rate,
    )


@app.command()
def chat(
    home: Home = None,
    bootstrap: Bootstrap = None,
    model: Annotated[str | None, typer.Option(help="Model id")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens per answer")] = 256,
    temperature: Annotated[float, typer.Option(help="0 for greedy")] = 0.0,
    seed: Annotated[int, typer.Option(help="Sampling seed")] = 0,
    mdns: Mdns = True,
    verbose: Verbose = 0,
) -> None:
    """Talk with the network; the conversation is kept until you leave (Ctrl-D)."""
    setup_logging(verbose)
    _ask.run_chat(
        home=home, bootstrap=bootstrap or [], model=model, max_tokens=max_tokens,
        temperature=temperature, seed=seed, mdns=mdns,
    )


@app.command()
def peers(
    home: Home = None,
    bootstrap: Bootstrap = None,
    wait: Annotated[float, typer.Option(help="Seconds to spend discovering")] = 3.0,
    mdns: Mdns = True,
    json_out: Json = False,
    verbose: Verbose = 0,
) -> None:
    """List the peers found and what their manifests say."""
    setup_logging(verbose)
    _ask.run_peers(home=home, bootstrap=bootstrap or [], wait=wait, mdns=mdns, json_out=json_out)


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
