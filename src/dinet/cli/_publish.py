"""`din model publish` and `din model versions`: a publisher's signed model-version records.

`publish` signs, with this home's key (the one that signs its model cards), a record
naming a stored model as the newest version of a model id, keeps a copy in the home
(HOME/versions/) and stores it in the DHT through a short-lived host joined to the
network: the `--bootstrap` peers, or else this home's own running node. Nodes that
follow the id (`din node --model ID --follow`) switch to it and pull it from whoever
holds it, so a holder must be up: typically the publisher's own node, following its
own model id.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import trio
import typer

from dinet.cli._common import fail, print_json, run, setup_logging
from dinet.config import default_home
from dinet.errors import ConfigError, DinetError, PeerUnreachable
from dinet.models.fetch import Swarm, open_swarm
from dinet.models.store import ModelStore, StoredModel
from dinet.node.service import NODE_FILE
from dinet.p2p.gate import peer_gate
from dinet.p2p.identity import load_or_create_identity
from dinet.wire.ids import PeerId
from dinet.wire.keys import SigningKey, is_peer_id
from dinet.wire.versions import (
    ModelVersion,
    ModelVersions,
    SignedModelVersions,
    newest_record,
    next_record,
    sign_versions,
    verify_versions,
    versions_key,
)

VERSIONS_DIR = "versions"
LOOKUP_TIMEOUT_S = 30.0
ROUTING_WAIT_S = 10.0

Home = Annotated[Path | None, typer.Option(help="State directory (holds models/ and versions/)")]
Bootstrap = Annotated[
    list[str] | None,
    typer.Option("--bootstrap", "-b", help="Peer multiaddr (default: this home's running node)"),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text")]
Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging")]
ModelId = Annotated[str, typer.Argument(help="The model id the record is for")]
SwarmKey = Annotated[
    Path | None, typer.Option(envvar="DINET_SWARM_KEY", help="The private swarm's swarm.key file")
]
AllowPeers = Annotated[
    Path | None, typer.Option(envvar="DINET_ALLOW_PEERS", help="Speak only to the peer ids in this file")
]


def publish(
    model_id: ModelId,
    model: Annotated[str, typer.Argument(help="A GGUF file (imported first), or a stored model's hash")],
    version: Annotated[str | None, typer.Option(help="Version label (default: the model card's)")] = None,
    lifetime_days: Annotated[
        float, typer.Option(min=0.01, max=30, help="Days until the record expires unless published again")
    ] = 7.0,
    bootstrap: Bootstrap = None,
    home: Home = None,
    swarm_key: SwarmKey = None,
    allow_peers: AllowPeers = None,
    json_out: Json = False,
    verbose: Verbose = 0,
) -> None:
    """Sign a record naming MODEL as the newest version of MODEL_ID, and put it in the DHT."""
    setup_logging(verbose)
    home = home or default_home()
    key = load_or_create_identity(home)
    stored = _guard(lambda: _stored(ModelStore(home), key, model_id, model, version))
    peers = bootstrap or _guard(lambda: _own_node(home))

    async def main() -> tuple[ModelVersions, int]:
        async with open_swarm(home, peers, gate=peer_gate(swarm_key, allow_peers)) as swarm:
            await _routing_ready(swarm)
            found = None  # none found in time: the home's own copy decides the sequence
            with trio.move_on_after(LOOKUP_TIMEOUT_S):
                found = await swarm.host.get_versions(key.peer_id, model_id)
            previous = _newer(_saved(home, key.peer_id, model_id), found)
            now = time.time()
            newest = ModelVersion(
                model_hash=stored.model_hash, version=version or stored.card.version, published_at=now
            )
            lifetime_s = lifetime_days * 86400
            record = next_record(key.peer_id, model_id, newest, previous, now=now, lifetime_s=lifetime_s)
            signed = sign_versions(record, key)
            _save(home, signed, record)
            took = await swarm.host.put_versions(signed)
            if took == 0:
                raise PeerUnreachable("no DHT peer took the record (kept in the home: publish again)")
            return record, took

    record, took = run(main)
    if json_out:
        print_json({**record.model_dump(mode="json"), "stored_at_peers": took})
    else:
        typer.echo(
            f"{model_id} version {record.newest.version} -> {record.newest.model_hash} "
            f"(record {record.sequence}, {len(record.versions)} versions, {took} peers took it)"
        )


def versions(
    model_id: ModelId,
    publisher: Annotated[str | None, typer.Option(help="Publisher's peer id (default: this home's)")] = None,
    bootstrap: Bootstrap = None,
    home: Home = None,
    swarm_key: SwarmKey = None,
    allow_peers: AllowPeers = None,
    json_out: Json = False,
    verbose: Verbose = 0,
) -> None:
    """The newest model-version record the DHT holds for MODEL_ID by its publisher."""
    setup_logging(verbose)
    home = home or default_home()
    if publisher is not None and not is_peer_id(publisher):
        fail(f"--publisher takes a peer id, not {publisher!r}")
    signer = PeerId(publisher) if publisher else load_or_create_identity(home).peer_id
    peers = bootstrap or _guard(lambda: _own_node(home))

    async def main() -> SignedModelVersions | None:
        async with open_swarm(home, peers, gate=peer_gate(swarm_key, allow_peers)) as swarm:
            await _routing_ready(swarm)
            with trio.fail_after(LOOKUP_TIMEOUT_S):
                return await swarm.host.get_versions(signer, model_id)

    signed = run(main)
    if signed is None:
        fail(f"no version record for {model_id!r} by {signer}")
    record = verify_versions(signed)
    if json_out:
        print_json(record.model_dump(mode="json"))
        return
    expires = _when(record.expires_at)
    typer.echo(f"{model_id} by {record.publisher}: record {record.sequence}, expires {expires}")
    for v in record.versions:
        typer.echo(f"  {v.version:16} {v.model_hash}  {_when(v.published_at)}")


async def _routing_ready(swarm: Swarm) -> None:
    """Wait (a little) for the bootstrap peers to enter the DHT routing table: the DHT
    takes a peer only once identify says it serves the DHT, a moment after joining, and
    a lookup from an empty table finds nothing."""
    with trio.move_on_after(ROUTING_WAIT_S):
        while swarm.host.routing_table_size() == 0:  # noqa: ASYNC110 (identify runs inside libp2p)
            await trio.sleep(0.1)
            for peer in swarm.host.connected_peers():
                await swarm.host.add_to_routing_table(peer)


def _stored(
    store: ModelStore, key: SigningKey, model_id: str, model: str, version: str | None
) -> StoredModel:
    """The model to publish: a GGUF file imported under `model_id` first, or a stored one."""
    path = Path(model)
    if path.is_file():
        return store.import_file(path, key, model_id=model_id, version=version)
    return store.find(model)


def _own_node(home: Path) -> list[str]:
    """The addresses of this home's running node, from its node file."""
    try:
        addrs = json.loads((home / NODE_FILE).read_text())["addrs"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"no running node in {home} to publish through: give --bootstrap ({exc})") from None
    return [a for a in addrs if isinstance(a, str)]


def _record_path(home: Path, publisher: str, model_id: str) -> Path:
    return home / VERSIONS_DIR / f"{versions_key(publisher, model_id).rsplit('/', 1)[1]}.json"


def _saved(home: Path, publisher: str, model_id: str) -> ModelVersions | None:
    """The last record this home published for `model_id` (even if expired: its sequence counts)."""
    try:
        signed = SignedModelVersions.model_validate_json(_record_path(home, publisher, model_id).read_bytes())
    except (OSError, ValueError):
        return None
    return ModelVersions.model_validate_json(signed.body)


def _save(home: Path, signed: SignedModelVersions, record: ModelVersions) -> None:
    path = _record_path(home, record.publisher, record.model_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(signed.model_dump_json())
    tmp.replace(path)


def _newer(saved: ModelVersions | None, found: SignedModelVersions | None) -> ModelVersions | None:
    """The record a new one must follow: the higher of the home's copy and the DHT's."""
    candidates = [r for r in (saved, verify_versions(found) if found else None) if r is not None]
    return candidates[newest_record(candidates)] if candidates else None


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _guard(fn):  # type: ignore[no-untyped-def]
    try:
        return fn()
    except DinetError as exc:
        fail(str(exc))
