"""`din ask`, `din chat` and `din peers`: the client side of the command."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict

import trio
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from dinet.cli._common import fail, print_json, run
from dinet.client.ask import Answer, ask
from dinet.client.network import open_network, peer_trust
from dinet.client.options import AskOptions
from dinet.client.stage_audit import StageCheck
from dinet.client.verify import Verification
from dinet.client.vote import MAX_REPLICAS, Vote, ask_replicas
from dinet.config import ClientSettings
from dinet.wire.ids import ModelHash
from dinet.wire.manifest import ModelOffer
from dinet.wire.messages import ChatMessage, GenerationParams


def answer_json(answer: Answer) -> dict[str, object]:
    return {
        "text": answer.text,
        "peer_id": answer.peer_id,
        "model_id": answer.model_id,
        "model_hash": answer.model_hash,
        "usage": answer.usage.model_dump(),
        "finish_reason": answer.finish_reason,
        "ttft_ms": round(answer.ttft_ms, 2),
        "tokens_per_s": round(answer.tokens_per_s, 2),
        "peers_tried": list(answer.peers_tried),
        "chain": list(answer.chain),
        "max_tokens_capped": answer.max_tokens_capped,
        "receipts": [r.receipt_id for r in answer.receipts],
        "refused_receipts": list(answer.refused_receipts),
        "verification": answer.verification.as_json() if answer.verification else None,
        "stage_check": None if answer.stage_check is None else asdict(answer.stage_check),
    }


def run_ask(
    prompt: str,
    settings: ClientSettings,
    *,
    model: str | None,
    model_hash: str | None,
    max_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
    deadline: float | None,
    policy: str,
    json_out: bool,
    sharded: bool = False,
    draft: str = "none",
    audit_stages: float = 0.0,
    replicas: int = 1,
    raw: bool = False,
    only_peers: list[str] | None = None,
) -> None:
    if not 1 <= replicas <= MAX_REPLICAS:
        fail(f"--replicas must be between 1 and {MAX_REPLICAS}")
    if replicas > 1 and deadline is not None:
        fail("--deadline cannot be combined with --replicas")
    if policy not in ("latency", "throughput", "cost"):
        fail(f"unknown policy {policy!r}: use latency, throughput or cost")
    try:
        # A raw prompt is continued as it is; a question goes through the model's chat template.
        params = GenerationParams(
            messages=None if raw else (ChatMessage(role="user", content=prompt),),
            prompt=prompt if raw else None,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )
    except ValidationError as exc:
        fail(f"invalid request: {exc.errors()[0]['msg']}")

    async def main() -> None:
        exact = None if model_hash is None else ModelHash(model_hash)  # as the user typed it
        options = AskOptions.from_settings(
            settings,
            model_id=model,
            model_hash=exact,
            policy=policy,
            only_peers=frozenset(only_peers) if only_peers else None,
            draft=draft,
            audit_stages=audit_stages,
        )
        async with open_network(settings) as network:
            if replicas > 1:
                vote = await ask_replicas(network, params, replicas, options)
                _show_vote(vote, json_out)
                return
            async for event in ask(
                network, params, options.with_(deadline_s=deadline, sharded=True if sharded else None)
            ):
                if isinstance(event, Answer):
                    if event.max_tokens_capped is not None and not json_out:
                        typer.secho(
                            f"(max tokens capped to {event.max_tokens_capped} to answer "
                            f"within {deadline:g} s)",
                            fg="yellow",
                            err=True,
                        )
                    if json_out:
                        print_json(answer_json(event))
                    else:
                        typer.echo()
                        typer.secho(_served_line(event), fg="cyan", err=True)
                        if event.verification is not None:
                            line, colour = _verified_line(event.verification)
                            typer.secho(line, fg=colour, err=True)
                        if event.stage_check is not None:
                            line, colour = _stages_line(event.stage_check)
                            typer.secho(line, fg=colour, err=True)
                elif not json_out:
                    sys.stdout.write(event.text)
                    sys.stdout.flush()

    run(main)


def _show_vote(vote: Vote, json_out: bool) -> None:
    if json_out:
        base = answer_json(vote.answer) if vote.answer is not None else {"text": None}
        print_json({**base, "vote": vote.summary()})
    elif vote.answer is not None:
        typer.echo(vote.answer.text)
        typer.secho(_served_line(vote.answer), fg="cyan", err=True)
        typer.secho(f"— {vote.explain()}", fg="yellow" if vote.dissenting else "cyan", err=True)
    if vote.answer is None:
        fail(vote.explain())


def _served_line(answer: Answer) -> str:
    return (
        f"— served by {answer.peer_id} ({answer.model_id}): {answer.usage.completion_tokens} "
        f"tokens, first after {answer.ttft_ms:.0f} ms, {answer.tokens_per_s:.1f} tokens/s"
    )


def _verified_line(check: Verification) -> tuple[str, str]:
    if check.verified is None:
        return f"— not verified: {check.error}", "yellow"
    if check.verified:
        return f"— verified by {check.verifier}: {check.checked} tokens plausible", "green"
    return (
        f"— FAILED verification by {check.verifier}: tokens at {list(check.bad_positions)} "
        f"are not what this model produces",
        "red",
    )


def _stages_line(check: StageCheck) -> tuple[str, str]:
    if check.caught:
        return f"— stages CAUGHT lying: {'; '.join(check.problems)}", "red"
    if not check.receipts_ok:
        return f"— the stages' receipts do not check: {'; '.join(check.problems)}", "red"
    audited = f"; {len(check.audited)} replayed on other holders and agreed" if check.audited else ""
    unaudited = f" ({'; '.join(check.problems)})" if check.problems else ""
    return f"— stages' receipts checked{audited}{unaudited}", "green"


def run_chat(
    settings: ClientSettings,
    *,
    model: str | None,
    max_tokens: int,
    temperature: float,
    seed: int,
    json_out: bool,
) -> None:
    async def main() -> None:
        history: list[ChatMessage] = []
        async with open_network(settings) as network:
            if not json_out:
                typer.echo("Connected. Type a message; Ctrl-D to leave.")
            while True:
                line = await trio.to_thread.run_sync(_read_line, "" if json_out else "> ")
                if line is None:
                    return
                if not line.strip():
                    continue
                history.append(ChatMessage(role="user", content=line))
                params = GenerationParams(
                    messages=tuple(history), max_tokens=max_tokens, temperature=temperature, seed=seed
                )
                async for event in ask(network, params, AskOptions.from_settings(settings, model_id=model)):
                    if isinstance(event, Answer):
                        history.append(ChatMessage(role="assistant", content=event.text))
                        if json_out:
                            print_json(answer_json(event))
                        else:
                            typer.echo()
                            typer.secho(_served_line(event), fg="cyan", err=True)
                    elif not json_out:
                        sys.stdout.write(event.text)
                        sys.stdout.flush()

    run(main)


def _offer_label(offer: ModelOffer) -> str:
    """A model id, with the blocks held if the peer is a pipeline stage."""
    return f"{offer.model_id} [{offer.layers[0]}:{offer.layers[1]}]" if offer.stage else offer.model_id


def _read_line(prompt: str) -> str | None:
    try:
        return input(prompt)
    except EOFError:
        return None


def run_peers(settings: ClientSettings, *, wait: float, json_out: bool) -> None:
    async def main() -> None:
        async with open_network(settings) as network:
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                await network.look()
                await trio.sleep(0.3)
            manifests = sorted(network.directory.manifests(), key=lambda m: m.peer_id)
            trust = {m.peer_id: peer_trust(network, m.peer_id) for m in manifests}
            if json_out:
                print_json(
                    [
                        {
                            **m.model_dump(mode="json"),
                            "rtt_ms": network.rtt_ms.get(m.peer_id),
                            "link": network.host.link_kind(m.peer_id),  # how this client reaches it
                            **trust[m.peer_id],
                        }
                        for m in manifests
                    ]
                )
                return
            table = Table(title=f"{len(manifests)} peers")
            for column in (
                "peer",
                "region",
                "models",
                "load",
                "tok/s",
                "ttft ms",
                "rtt ms",
                "reach",
                "price",
                "score",
            ):
                table.add_column(column)
            for m in manifests:
                rtt = network.rtt_ms.get(m.peer_id)
                table.add_row(
                    m.peer_id,
                    m.region,
                    ", ".join(_offer_label(o) for o in m.models) or "no model",
                    f"{m.load.active}+{m.load.queued}/{m.max_concurrent}",
                    f"{m.tokens_per_s:.1f}",
                    f"{m.ttft_ms:.0f}",
                    "-" if rtt is None else f"{rtt:.1f}",
                    _reach_cell(m.reach, network.host.link_kind(m.peer_id)),
                    f"{m.price_per_token:g}",
                    _score_cell(trust[m.peer_id]),
                )
            Console().print(table)

    run(main)


def _reach_cell(advertised: str, link: str | None) -> str:
    """What the peer says of itself (public, private, unknown) and how we reach it now."""
    return f"{advertised}, {link or 'not connected'}"


def _score_cell(trust: dict[str, object]) -> str:
    score = trust["reputation"]
    if not isinstance(score, float):
        return "-"
    return f"{score:.2f}" + (" excluded" if trust["excluded"] else "")
