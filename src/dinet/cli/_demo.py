"""`din demo`: a local mesh of real node processes answering one real question."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import trio
import typer

from dinet.cli._ask import answer_json
from dinet.cli._common import print_json, run
from dinet.client.ask import Answer, ask
from dinet.client.network import Network, open_network
from dinet.config import ClientSettings
from dinet.errors import DinetError, ManifestError, RoutingError
from dinet.node.local_mesh import LocalMesh
from dinet.p2p.discovery import fetch_manifests
from dinet.wire.ids import PeerId
from dinet.wire.manifest import verify_manifest
from dinet.wire.messages import ChatMessage, GenerationParams

MESH_TIMEOUT_S = 60.0


def run_demo(*, nodes: int, prompt: str, max_tokens: int, json_out: bool) -> None:
    say = _quiet if json_out else _say
    with tempfile.TemporaryDirectory(prefix="dinet-demo-") as root:
        say(f"starting {nodes} node processes on loopback (1 thread each)…")
        started = time.monotonic()
        with LocalMesh(Path(root), size=nodes, threads=1) as mesh:
            for node in mesh.nodes:
                say(f"  node {node.peer_id}  pid {node.process.pid}  {node.addr}")
            say(f"  all serving after {time.monotonic() - started:.1f} s")
            settings = ClientSettings(home=Path(root) / "client", bootstrap=mesh.bootstrap[:1], mdns=False)
            params = GenerationParams(
                messages=(ChatMessage(role="user", content=prompt),), max_tokens=max_tokens
            )

            async def main() -> None:
                async with open_network(settings) as network:
                    say("waiting until the nodes have discovered each other…")
                    await _wait_for_full_mesh(network, [n.peer_id for n in mesh.nodes])
                    say(f"  mesh complete after {time.monotonic() - started:.1f} s")
                    say(f"\nQ: {prompt}\nA: ", end="")
                    async for event in ask(network, params):
                        if isinstance(event, Answer):
                            if json_out:
                                print_json(answer_json(event))
                            else:
                                say("\n")
                                typer.secho(
                                    f"served by {event.peer_id}: {event.usage.completion_tokens} "
                                    f"tokens, first after {event.ttft_ms:.0f} ms, "
                                    f"{event.tokens_per_s:.1f} tokens/s",
                                    fg="cyan",
                                )
                        else:
                            say(event.text, end="")

            run(main)
            say("stopping the nodes…")
        say("done.")


def _quiet(text: str, end: str = "\n") -> None:
    pass


def _say(text: str, end: str = "\n") -> None:
    sys.stdout.write(text + end)
    sys.stdout.flush()


async def _wait_for_full_mesh(network: Network, peer_ids: list[PeerId]) -> None:
    """Until every node holds a valid manifest of every other node."""
    with trio.move_on_after(MESH_TIMEOUT_S):
        # The mesh is other processes' state: asked, not signalled.
        while not await _full_mesh(network, peer_ids):  # noqa: ASYNC110
            await trio.sleep(0.5)
        return
    raise RoutingError(f"the nodes did not discover each other within {MESH_TIMEOUT_S:g} s")


async def _full_mesh(network: Network, peer_ids: list[PeerId]) -> bool:
    for peer_id in peer_ids:
        try:
            signed, _ = await fetch_manifests(network.host, peer_id)
        except DinetError:
            return False
        known = set()
        for item in signed:
            try:
                known.add(verify_manifest(item).peer_id)
                network.directory.add(item)  # so the next round can dial the peers it names
            except ManifestError:
                continue
        if not set(peer_ids) <= known:
            return False
    return True
