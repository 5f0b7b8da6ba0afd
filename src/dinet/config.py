"""Settings of each role (node, client, gateway): one model each, the single source of truth.

Every field, with its description, is at once a flag of its `din` command (`threads` ->
`--threads`), an environment variable (`DINET_THREADS`) and a key of the optional config
file (`threads = 1` in its `[node]` table). A value given in several places is taken by one
rule: flag > environment > file > default (`dinet._config_layers`, `docs/settings.md`).
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import platformdirs
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dinet.engine.testing.liar import ALLOW_ENV, liars_allowed, parse_lie
from dinet.errors import ConfigError
from dinet.p2p.host import DIAL_TIMEOUT_S
from dinet.p2p.liveness import PROBE_TIMEOUT_S
from dinet.p2p.peer_addrs import check_peer_addr
from dinet.routing.select import EXCLUDE_BELOW, MIN_EVIDENCE
from dinet.trust.reputation import PROBATION_GOOD
from dinet.wire.framing import MAX_FRAME
from dinet.wire.keys import is_peer_id
from dinet.wire.manifest import ADDRESS_PATTERN
from dinet.wire.messages import MAX_PROMPT_CHARS, MAX_TOKENS_LIMIT


def default_home() -> Path:
    return Path(platformdirs.user_data_dir("dinet"))


# A list of multiaddrs: from the environment a JSON list or plain text, separated by
# commas or whitespace (`DINET_BOOTSTRAP="/dns4/a/…,/dns4/b/…"`); no multiaddr holds either.
Multiaddrs = Annotated[list[str], NoDecode]


def split_multiaddrs(value: object) -> object:
    """A JSON list, or text of addresses separated by commas or whitespace, as a list; each
    item of a list is split the same way (so `--bootstrap A,B` gives two)."""
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"neither a JSON list nor addresses separated by commas: {exc}") from None
        else:
            value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return value  # the field's own type check says what is wrong
    return [part for item in value for part in re.split(r"[,\s]+", item) if part]


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DINET_", extra="forbid")

    # The config file's tables this role reads, later ones winning; top-level keys are common.
    sections: ClassVar[tuple[str, ...]] = ()

    home: Path = Field(default_factory=default_home, description="Directory for identity and state")
    bootstrap: Multiaddrs = Field(
        default=[],
        description="Peers to join through: multiaddrs ending in /p2p/<peer id> (/ip4, /ip6, /dns4, "
        "/dns6) or /dnsaddr/<domain>; in the environment, separated by commas or spaces",
    )
    mdns: bool = Field(default=True, description="Discover peers on the local network by mDNS")
    swarm_key: Path | None = Field(
        default=None,
        description="Join only the private swarm of this swarm.key file (libp2p pnet; `din swarm-key new`)",
    )
    allow_peers: Path | None = Field(
        default=None,
        description="Speak only to the peer ids in this file (one a line, # comments; reloaded on change)",
    )
    hole_punching: bool = Field(
        default=True,
        description="Upgrade connections through a relay to direct ones by hole punching (DCUtR)",
    )
    dial_timeout_s: float = Field(
        default=DIAL_TIMEOUT_S,
        gt=0,
        le=120,
        description="Seconds one dial, one manifest query or opening one request's stream "
        "to a peer may take (raise it on slow or distant links)",
    )
    probe_timeout_s: float = Field(
        default=PROBE_TIMEOUT_S,
        gt=0,
        le=60,
        description="Seconds a liveness probe of a connected peer may take; "
        "two missed in a row drop the peer",
    )

    chain_rpc: str | None = Field(
        default=None,
        description="JSON-RPC URL of the EVM chain whose payment channels pay for answers "
        "(`din chain devnet` starts one to try)",
    )
    channel_contract: str | None = Field(
        default=None, pattern=ADDRESS_PATTERN, description="Address of the payment channels contract there"
    )

    @field_validator("bootstrap", mode="before")
    @classmethod
    def _split_bootstrap(cls, value: object) -> object:
        return split_multiaddrs(value)

    @field_validator("bootstrap")
    @classmethod
    def _peer_addrs(cls, addrs: list[str]) -> list[str]:
        try:
            return [check_peer_addr(addr) for addr in addrs]
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


class NodeSettings(CommonSettings):
    """`din node`: serves a model on the network (with `no_model`, only joins and routes)."""

    sections: ClassVar[tuple[str, ...]] = ("node",)

    model: str | None = Field(default=None, description="GGUF path or model id; default model if unset")
    also_serve: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Also serve these whole generation models (GGUF paths, ids or hashes, as --model) "
        "beside --model, each in its own engine worker, sharing the node's slots and queue",
    )
    no_model: bool = Field(
        default=False,
        description="Serve no model: only join, route, keep the DHT and pass manifests on "
        "(a cheap always-on peer, e.g. a public VPS)",
    )
    listen: Multiaddrs = Field(default=["/ip4/0.0.0.0/tcp/0"], description="Multiaddrs to listen on")
    announce: Multiaddrs = Field(
        default=[],
        description="Multiaddrs that reach this node (a forwarded port): advertised as given, "
        "and reported if peers cannot dial them back",
    )
    upnp: bool = Field(default=False, description="Ask the home router (UPnP) to forward the listen ports")
    ws_cert: Path | None = Field(
        default=None,
        description="TLS certificate (PEM, with its chain) of the /wss listen addresses, "
        "where browser tabs dial from https pages",
    )
    ws_key: Path | None = Field(default=None, description="Private key (PEM) of --ws-cert")
    threads: int = Field(
        default=2, ge=1, le=256, description="Compute threads: llama.cpp's in the worker, torch's in a stage"
    )
    memory_mb: int | None = Field(default=None, ge=64, description="Address-space limit of the worker")
    sandbox: bool = Field(
        default=True,
        description="Run the engine worker (llama.cpp, or a stage's torch) sandboxed: no network, "
        "read-only model, limits (docs/sandbox.md)",
    )
    engine_restarts: int = Field(
        default=3, ge=0, le=100, description="Worker failures in a row before the model is given up"
    )
    engine_backoff_s: float = Field(
        default=1.0, gt=0, le=60, description="First delay before restarting a failing worker (doubles)"
    )
    region: str = Field(default="local", max_length=64, description="Region label in the manifest")
    price: float = Field(default=0.0, ge=0, description="Price per completion token, in credits")
    prompt_price: float = Field(default=0.0, ge=0, description="Price per prompt token, in credits")
    wei_per_credit: int = Field(
        default=0,
        ge=0,
        lt=2**128,
        description="With --chain-rpc: the wei one credit of the prices costs, paid by channel vouchers",
    )
    channel_token: str | None = Field(
        default=None,
        pattern=ADDRESS_PATTERN,
        description="With --chain-rpc: be paid in this ERC-20 token (its address) instead of ETH",
    )
    require_channel: bool = Field(
        default=False, description="With --chain-rpc: serve only requests paid by a payment channel"
    )
    claim_at_wei: int = Field(
        default=10**16, ge=1, description="Claim a channel's vouchers on chain once this many wei are due"
    )
    claim_after_s: float = Field(
        default=3600.0, gt=0, description="... or once the oldest unclaimed voucher is this old"
    )
    channel_margin_s: float = Field(
        default=600.0,
        ge=0,
        description="Close a channel this long before it expires (then its client may take back the rest) "
        "and refuse its requests from then on",
    )
    refuse_debt: float | None = Field(
        default=None,
        ge=0,
        description="Refuse clients that owe more credits unpaid than this, here and to peers that "
        "served this home (their published debt records); requests paid by channel are served",
    )
    debt_every_s: float = Field(
        default=300.0, gt=0, le=3600, description="Seconds between a node's debt records of its debtors"
    )
    priority: bool = Field(
        default=True, description="Serve waiting clients in order of their standing (tit-for-tat)"
    )
    free_allowance: float = Field(
        default=1.0, ge=0, description="Credits of standing every new peer starts with"
    )
    max_concurrent: int = Field(default=1, ge=1, le=64, description="Generations at once, decoded together")
    max_queue: int = Field(default=8, ge=0, le=1024, description="Requests waiting beyond those")
    prefix_cache_mb: int = Field(
        default=256,
        ge=0,
        le=1_000_000,
        description="MB of earlier prompts' KV state kept to reuse (a chat's next turn); 0: off",
    )
    per_peer_rate: float = Field(
        default=10.0, gt=0, le=10_000, description="Inference requests per second one peer may send"
    )
    per_peer_burst: int = Field(
        default=30, ge=1, le=100_000, description="Requests one peer may send at once above its rate"
    )
    per_peer_concurrency: int = Field(
        default=4, ge=1, le=1024, description="Inference streams one peer may have open at once"
    )
    max_tokens_limit: int = Field(
        default=MAX_TOKENS_LIMIT, ge=1, le=MAX_TOKENS_LIMIT, description="Most tokens one request may ask for"
    )
    probation_max_tokens: int = Field(
        default=1024,
        ge=1,
        le=MAX_TOKENS_LIMIT,
        description="Most tokens a client without standing here may ask for in one request "
        "(refused with `probation` above it)",
    )
    probation_receipts: int = Field(
        default=3,
        ge=0,
        le=1_000_000,
        description="Countersigned receipts between a client and this node before it has standing "
        "here (0: no probation)",
    )
    max_prompt_chars: int = Field(
        default=MAX_PROMPT_CHARS,
        ge=1,
        le=MAX_PROMPT_CHARS,
        description="Most characters of prompt (all messages together, with their tool calls and "
        "the tools offered) in one request",
    )
    max_request_bytes: int = Field(
        default=MAX_FRAME, ge=16_384, le=MAX_FRAME, description="Largest request frame accepted, in bytes"
    )
    layers: str | None = Field(
        default=None,
        pattern=r"^\d+:\d+$",
        description="Serve only blocks START:STOP of the model as a pipeline stage (/dinet/shard/1)",
    )
    shard_kv_mb: float = Field(
        default=512.0,
        gt=0,
        description="Most MB of KV cache a stage keeps; least recently used sessions go first",
    )
    shard_idle_s: float = Field(default=60.0, gt=0, description="A stage frees a session unused this long")
    draft_model: Path | None = Field(
        default=None,
        description="A first stage's draft: a small whole GGUF of the same vocabulary that guesses "
        "a chain's next tokens (`din ask --draft model`)",
    )
    heartbeat_s: float = Field(
        default=5.0, gt=0, description="Seconds between checks whether the manifest changed (gossiped then)"
    )
    max_connections: int = Field(
        default=32,
        ge=4,
        le=10_000,
        description="Connections kept open; idle ones past this are closed (busy ones and relays stay)",
    )
    relay: bool = Field(
        default=True, description="Relay for peers behind NAT (circuit relay v2) while publicly reachable"
    )
    relay_max_reservations: int = Field(
        default=128, ge=1, le=100_000, description="Peers behind NAT this relay keeps a slot for at once"
    )
    relay_max_circuits: int = Field(default=256, ge=1, le=100_000, description="Relayed connections at once")
    relay_circuit_bytes: int = Field(
        default=32 << 20, ge=0, description="Bytes one relayed connection may carry, both ways (0: no limit)"
    )
    relay_circuit_s: float = Field(
        default=900.0, ge=0, description="Seconds one relayed connection may last (0: no limit)"
    )
    relay_reservation_s: int = Field(
        default=3600, ge=1, le=86_400, description="Seconds a slot on this relay lasts unless renewed"
    )
    relays: int = Field(
        default=2,
        ge=0,
        le=16,
        description="Relays a node behind NAT keeps a slot on, to be reachable through",
    )
    scrub_mb_s: float = Field(
        default=4.0, gt=0, description="MB/s at which the served model's chunks are re-checked"
    )
    liar: str | None = Field(
        default=None,
        description=f"TESTING ONLY, refused unless {ALLOW_ENV}=1: lie about answers "
        "(random, corrupt:K, wrong-model:PATH, ...; cover: pass every claim it verifies)",
    )
    # embeddings (issue 23): a second, small model served on /dinet/embed/1
    embedding_model: Path | None = Field(
        default=None,
        description="Also serve this embedding GGUF on /dinet/embed/1 (all-MiniLM-L6-v2, made by "
        "`make embedding-model`, is in the environment's share/dinet/)",
    )
    embedding_liar: Literal["random"] | None = Field(
        default=None,
        description=f"TESTING ONLY, refused unless {ALLOW_ENV}=1: answer embeddings with random vectors",
    )

    api_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Also serve the OpenAI-compatible API and web page on this port (0: any free port)",
    )
    api_host: str = Field(
        default="127.0.0.1",
        max_length=255,
        description="Address the API binds (with api_port); other than loopback needs api_key",
    )
    api_key: SecretStr | None = Field(
        default=None, description="With api_port: clients must send `Authorization: Bearer KEY`"
    )
    # follow (issue 20): automatic model upgrades from signed model-version records
    follow: bool = Field(
        default=False,
        description="Serve the newest version of the model that its publisher has signed, "
        "switching over without dropping streams (docs/models.md)",
    )
    publisher: str | None = Field(
        default=None,
        max_length=128,
        description="With follow: the peer id whose version records to follow "
        "(default: the publisher of the served model's card)",
    )
    follow_every_s: float = Field(
        default=60.0, gt=0, description="With follow: seconds between looks for a newer version record"
    )
    # auto (issue 20): supply follows demand, demand records and `--serve auto`
    serve: Literal["model", "auto"] = Field(
        default="model",
        description="What to serve: `model` (the one --model names) or `auto` (the candidate of "
        "--auto-models whose demand most exceeds its supply, moving as demand moves; docs/models.md)",
    )
    auto_models: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="With serve auto: the models this node may serve (ids, hashes or .gguf paths), "
        "separated by commas",
    )
    auto_disk_mb: float | None = Field(
        default=None, gt=0, description="With serve auto: never serve a model whose file is larger (MB)"
    )
    auto_memory_mb: float | None = Field(
        default=None, gt=0, description="With serve auto: never serve a model that needs more memory (MB)"
    )
    auto_every_s: float = Field(
        default=60.0, gt=0, description="With serve auto: seconds between decisions which model to serve"
    )
    auto_dwell_s: float = Field(
        default=600.0, ge=0, description="With serve auto: serve a model at least this long before moving"
    )
    auto_idle_after_s: float = Field(
        default=600.0, ge=0, description="With serve auto: stop serving a model nobody asked for this long"
    )
    auto_margin: float = Field(
        default=0.5,
        ge=0,
        le=100,
        description="With serve auto: how much busier per server another model "
        "must be to move to it (0.5: 50%)",
    )
    demand_every_s: float = Field(
        default=300.0,
        gt=0,
        le=3600,
        description="Seconds between a server's demand records (requests and busy refusals per minute)",
    )
    demand_publishers: int = Field(
        default=8,
        ge=1,
        le=10_000,
        description="Demand records a model's topic carries per period, about: each server publishes "
        "with probability publishers / servers",
    )

    @field_validator("liar")
    @classmethod
    def _liars_only_when_allowed(cls, liar: str | None) -> str | None:
        if liar is not None:
            if not liars_allowed():
                raise ValueError(LIAR_REFUSED)
            parse_lie(liar)  # a ValueError names what is wrong with it
        return liar

    @field_validator("embedding_liar")
    @classmethod
    def _embedding_liars_only_when_allowed(cls, liar: str | None) -> str | None:
        if liar is not None and not liars_allowed():
            raise ValueError(LIAR_REFUSED)
        return liar

    @field_validator("api_key")
    @classmethod
    def _key_not_empty(cls, key: SecretStr | None) -> SecretStr | None:
        return _not_empty(key)

    @field_validator("listen", "announce", mode="before")
    @classmethod
    def _split_listen(cls, value: object) -> object:
        return split_multiaddrs(value)

    @model_validator(mode="after")
    def _stage_lies_at_stages(self) -> NodeSettings:
        if self.liar is not None and parse_lie(self.liar).at_stage != (self.layers is not None):
            where = "a whole-model node" if self.layers is None else "a pipeline stage (--layers)"
            raise ValueError(f"--liar {self.liar} is not a lie {where} can tell")
        return self

    @model_validator(mode="after")
    def _drafts_at_stages(self) -> NodeSettings:
        if self.draft_model is not None and self.layers is None:
            raise ValueError("--draft-model is for a pipeline stage (--layers): a whole node needs no draft")
        return self

    @model_validator(mode="after")
    def _no_model_serves_nothing(self) -> NodeSettings:
        if self.no_model:
            given = [
                flag
                for flag, value in (("--model", self.model), ("--layers", self.layers), ("--liar", self.liar))
                if value is not None
            ]
            if given:
                raise ValueError(
                    f"--no-model contradicts {' and '.join(given)}: a node that serves no model "
                    "cannot take it (set one or the other)"
                )
        return self

    @model_validator(mode="after")
    def _wss_has_its_certificate(self) -> NodeSettings:
        if (self.ws_cert is None) != (self.ws_key is None):
            raise ValueError("--ws-cert and --ws-key go together: a certificate and its private key")
        wss = [a for a in self.listen if "wss" in a.split("/")]
        if wss and self.ws_cert is None:
            raise ValueError(f"listening on {wss[0]} needs --ws-cert and --ws-key (a TLS certificate)")
        return self

    @model_validator(mode="after")
    def _follow_serves_whole_models(self) -> NodeSettings:
        if self.follow and (self.no_model or self.layers is not None):
            raise ValueError("--follow switches a whole model: it takes neither --no-model nor --layers")
        if self.publisher is not None and not is_peer_id(self.publisher):
            raise ValueError(f"--publisher takes a peer id, not {self.publisher!r}")
        return self

    @model_validator(mode="after")
    def _also_serve_whole_models(self) -> NodeSettings:
        if not self.also_serve:
            return self
        given = [
            flag
            for flag, value in (
                ("--no-model", self.no_model),
                ("--layers", self.layers is not None),
                ("--follow", self.follow),
                ("--serve auto", self.serve == "auto"),
                ("--fake-engine", self.fake_engine),
                ("--liar", self.liar is not None),
            )
            if value
        ]
        if given:
            raise ValueError(
                f"--also-serve loads more whole models beside --model: it takes no {' or '.join(given)}"
            )
        return self

    @field_validator("auto_models", "also_serve", mode="before")
    @classmethod
    def _split_model_lists(cls, value: object) -> object:
        return split_multiaddrs(value)  # "A,B" or a JSON list (an environment variable) as a list

    @model_validator(mode="after")
    def _auto_chooses_its_model(self) -> NodeSettings:
        if self.serve != "auto":
            if self.auto_models:
                raise ValueError("--auto-models is for --serve auto")
            return self
        given = [
            flag
            for flag, value in (
                ("--model", self.model is not None),
                ("--no-model", self.no_model),
                ("--layers", self.layers is not None),
                ("--follow", self.follow),
            )
            if value
        ]
        if given:
            raise ValueError(f"--serve auto chooses its model: it takes no {' or '.join(given)}")
        if not self.auto_models:
            raise ValueError("--serve auto needs --auto-models: the models this node may serve")
        return self

    # issue 20, scalebench: many nodes on one machine for bench/scale.py.
    fake_engine: bool = Field(
        default=False,
        description="BENCHMARKS ONLY: serve a FAKE model (fake-echo, answers echo the prompt, "
        "no llama.cpp), so that a hundred nodes fit on one machine",
    )

    @model_validator(mode="after")
    def _fake_engine_serves_nothing_else(self) -> NodeSettings:
        if self.fake_engine:
            given = [
                flag
                for flag, value in (
                    ("--no-model", self.no_model or None),
                    ("--model", self.model),
                    ("--layers", self.layers),
                    ("--liar", self.liar),
                    ("--follow", self.follow or None),
                    ("--serve auto", self.serve == "auto" or None),
                )
                if value is not None
            ]
            if given:
                raise ValueError(
                    f"--fake-engine contradicts {' and '.join(given)}: a fake node serves "
                    "its fake model and nothing else (set one or the other)"
                )
        return self


LIAR_REFUSED = (
    f"--liar makes this node lie to its clients, for tests of verification only; "
    f"set {ALLOW_ENV}=1 to allow it"
)


class ClientSettings(CommonSettings):
    """`din ask`, `din chat`, `din peers`: ask the network."""

    sections: ClassVar[tuple[str, ...]] = ("client",)

    discover_timeout_s: float = Field(default=10.0, gt=0, description="How long to look for peers")
    request_timeout_s: float = Field(default=120.0, gt=0, description="Limit for a whole answer")
    max_price: float | None = Field(
        default=None, ge=0, description="Most credits per token (prompt or completion) to pay a peer"
    )
    channel_deposit_wei: int | None = Field(
        default=None,
        ge=1,
        description="With --chain-rpc: open a payment channel with this deposit to a node that takes "
        "them, the first time it is asked (otherwise only channels opened by `din pay open` are used)",
    )
    channel_timeout_s: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        description="Seconds after which an unclosed channel's deposit may be reclaimed",
    )
    reputation_half_life_h: float = Field(
        default=6.0, gt=0, le=24 * 365, description="Hours after which a peer's past counts half"
    )
    exclude_below: float = Field(
        default=EXCLUDE_BELOW, ge=0, le=1, description="Reputation under which a peer is never asked"
    )
    min_evidence: float = Field(
        default=MIN_EVIDENCE, ge=1, description="Events a reputation must rest on before it can exclude"
    )
    verify_rate: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Fraction of answers re-scored by another peer serving the same model (1: all)",
    )
    probation_good: float = Field(
        default=PROBATION_GOOD,
        ge=0,
        description="Good evidence (about 2 per verified answer) a peer needs before its answers are "
        "checked only at verify_rate; until then every answer is, by two verifiers (0: no probation)",
    )
    # issue 20, SLA-aware routing (sla): peers of another region pay a small routing penalty.
    region: str = Field(
        default="", max_length=64, description="This client's region: peers of other regions rank lower"
    )
    prefix_affinity: bool = Field(
        default=True,
        description="Send a chat's next turn to the peer holding its beginning in its prefix cache",
    )


class GatewaySettings(ClientSettings):
    """`din gateway`: an OpenAI-compatible HTTP API and web page in front of the network.

    A gateway asks the network as a client does, so it reads the file's `[client]` table too.
    """

    sections: ClassVar[tuple[str, ...]] = ("client", "gateway")

    host: str = Field(default="127.0.0.1", max_length=255, description="Address the HTTP server binds")
    port: int = Field(default=8000, ge=0, le=65535, description="HTTP port (0: any free port)")
    api_key: SecretStr | None = Field(
        default=None, description="Clients must send `Authorization: Bearer KEY` when set"
    )
    default_max_tokens: int = Field(
        default=512, ge=1, le=4096, description="Answer length limit when a request sets none"
    )
    refresh_s: float = Field(default=2.0, gt=0, description="Seconds between peer list refreshes")

    @field_validator("api_key")
    @classmethod
    def _key_not_empty(cls, key: SecretStr | None) -> SecretStr | None:
        return _not_empty(key)

    @model_validator(mode="after")
    def _key_unless_loopback(self) -> GatewaySettings:
        if self.api_key is None and not is_loopback(self.host):
            raise ValueError(
                f"refusing to listen on {self.host} without an API key: anyone who can reach it "
                "could use the network in your name (set --api-key or DINET_API_KEY)"
            )
        return self


ROLES: dict[str, type[CommonSettings]] = {
    "node": NodeSettings,
    "client": ClientSettings,
    "gateway": GatewaySettings,
}


def _not_empty(key: SecretStr | None) -> SecretStr | None:
    if key is not None and not key.get_secret_value():
        raise ValueError("the API key is empty")
    return key


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
