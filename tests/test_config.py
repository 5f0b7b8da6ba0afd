"""Settings of each role: one rule (flag > env > file > default) and one file format."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dinet._config_layers import resolve
from dinet.config import ClientSettings, GatewaySettings, NodeSettings
from dinet.errors import ConfigError


@pytest.fixture(autouse=True)
def no_dinet_env(monkeypatch):
    """The developer's own DINET_* variables must not leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("DINET_"):
            monkeypatch.delenv(name)


PEER = "12D3KooWQK1wnefoLrcVHbbnf5tLzbopUd3K3bFAoJpA7YJgL5pV"  # RFC 8032 TEST 1 key: never real


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dinet.toml"
    path.write_text(text)
    return path


ONE_FILE = """
bootstrap = ["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWQK1wnefoLrcVHbbnf5tLzbopUd3K3bFAoJpA7YJgL5pV"]
mdns = false

[node]
threads = 3
region = "eu-west"

[client]
request_timeout_s = 30
discover_timeout_s = 4

[gateway]
discover_timeout_s = 6
port = 8080
"""


def test_each_role_reads_the_shared_keys_and_its_own_tables(tmp_path):
    path = write(tmp_path, ONE_FILE)
    node = resolve(NodeSettings, config=path).settings
    client = resolve(ClientSettings, config=path).settings
    gateway = resolve(GatewaySettings, config=path).settings
    for settings in (node, client, gateway):
        assert settings.bootstrap == [f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"]
        assert settings.mdns is False
    assert (node.threads, node.region) == (3, "eu-west")
    assert (client.request_timeout_s, client.discover_timeout_s) == (30, 4)
    # A gateway is a client too: [client] applies, and [gateway] wins over it.
    assert (gateway.request_timeout_s, gateway.discover_timeout_s, gateway.port) == (30, 6, 8080)


def test_a_role_table_beats_the_shared_keys(tmp_path):
    path = write(tmp_path, "mdns = true\n[node]\nmdns = false\n")
    assert resolve(NodeSettings, config=path).settings.mdns is False
    assert resolve(ClientSettings, config=path).settings.mdns is True


def test_precedence_is_flag_over_env_over_file_over_default(tmp_path, monkeypatch):
    path = write(tmp_path, '[node]\nthreads = 3\nregion = "file"\nprice = 0.5\n')
    monkeypatch.setenv("DINET_REGION", "env")
    monkeypatch.setenv("DINET_PRICE", "0.25")
    resolved = resolve(NodeSettings, config=path, flags={"price": "0.125"})
    settings, origins = resolved.settings, resolved.origins
    assert (settings.max_queue, origins["max_queue"].layer) == (8, "default")
    assert (settings.threads, origins["threads"].layer) == (3, "file")
    assert (settings.region, origins["region"].layer) == ("env", "env")
    assert (settings.price, origins["price"].layer) == (0.125, "flag")
    assert origins["region"].name == "DINET_REGION"
    assert origins["threads"].name == f"{path} [node]"


def test_the_report_masks_secrets_and_names_every_source(tmp_path, monkeypatch):
    monkeypatch.setenv("DINET_API_KEY", "sk-very-secret")
    report = resolve(GatewaySettings, config=write(tmp_path, "[gateway]\nport = 9000\n")).report()
    assert set(report) == set(GatewaySettings.model_fields)
    assert report["api_key"]["from"] == "env" and "sk-very-secret" not in str(report)
    assert report["port"] == {"value": 9000, "from": "file", "source": f"{tmp_path / 'dinet.toml'} [gateway]"}
    assert report["host"] == {"value": "127.0.0.1", "from": "default", "source": None}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[node]\nthraeds = 2\n", "unknown key 'thraeds' in [node] (did you mean 'threads'?)"),
        ("[client]\nthreads = 2\n", "unknown key 'threads' in [client]"),
        ("threads = 2\n", "'threads' belongs in a table: [node]"),
        ("colour = 'blue'\n", "unknown top-level key 'colour'"),
        ("[nodes]\nthreads = 2\n", "unknown top-level key 'nodes' (did you mean 'node'?"),
        ("node = 2\n", "[node] must be a table"),
        ("[node\nthreads = 2\n", "is not valid TOML"),
    ],
)
def test_a_bad_file_is_refused_with_what_is_wrong(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        resolve(NodeSettings, config=path)
    assert expected in str(caught.value) and str(path) in str(caught.value)


def test_a_misspelt_key_of_another_role_is_refused_too(tmp_path):
    """A typo in [node] is caught by `din ask` as well, not only when a node next starts."""
    with pytest.raises(ConfigError, match="thraeds"):
        resolve(ClientSettings, config=write(tmp_path, "[node]\nthraeds = 2\n"))


def test_an_unreadable_file_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read config file .*missing\.toml"):
        resolve(NodeSettings, config=tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("file", "invalid setting threads = 'many' (from file {path} [node]): Input should be a valid"),
        ("env", "invalid setting threads = 'many' (from env DINET_THREADS): Input should be a valid"),
        ("flag", "invalid setting threads = 'many' (from flag --threads): Input should be a valid"),
    ],
)
def test_a_bad_value_names_the_field_and_where_it_came_from(tmp_path, monkeypatch, where, expected):
    path = write(tmp_path, '[node]\nthreads = "many"\n' if where == "file" else "")
    if where == "env":
        monkeypatch.setenv("DINET_THREADS", "many")
    flags = {"threads": "many"} if where == "flag" else {}
    with pytest.raises(ConfigError) as caught:
        resolve(NodeSettings, config=path, flags=flags)
    assert str(caught.value).startswith(expected.format(path=path))


A, B = f"/ip4/192.0.2.7/tcp/4001/p2p/{PEER}", f"/dns4/boot.example/tcp/4001/p2p/{PEER}"


@pytest.mark.parametrize(
    "text",
    [
        f'["{A}", "{B}"]',  # JSON
        f"{A},{B}",
        f"{A}, {B}",
        f"{A} {B}",
        f"\n  {A}\n  {B}\n",  # as a shell heredoc or a compose file may give it
    ],
)
def test_bootstrap_in_the_environment_is_a_json_list_or_separated_text(monkeypatch, text):
    monkeypatch.setenv("DINET_BOOTSTRAP", text)
    assert resolve(ClientSettings).settings.bootstrap == [A, B]
    assert ClientSettings().bootstrap == [A, B]  # constructed in Python, it reads the same


def test_bootstrap_from_a_file_list_and_repeated_flags(tmp_path):
    path = write(tmp_path, f'bootstrap = ["{A}", "/dnsaddr/boot.example"]\n')
    assert resolve(NodeSettings, config=path).settings.bootstrap == [A, "/dnsaddr/boot.example"]
    assert resolve(ClientSettings, flags={"bootstrap": [A, B]}).settings.bootstrap == [A, B]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("/ip4/127.0.0.1/tcp/1", "not a peer multiaddr"),  # names no peer
        ("/dns4/boot.example/tcp/1", "not a peer multiaddr"),
        ("not-an-address", "not a multiaddr"),
        (f'["{A}"', "neither a JSON list nor addresses separated by commas"),
    ],
)
def test_a_bootstrap_that_names_no_peer_is_refused_with_its_source(monkeypatch, text, why):
    monkeypatch.setenv("DINET_BOOTSTRAP", text)
    with pytest.raises(ConfigError, match=f"invalid setting bootstrap .*from env DINET_BOOTSTRAP.*{why}"):
        resolve(ClientSettings)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"model": "smollm2-135m-instruct"}, "--model"),
        ({"layers": "0:10"}, "--layers"),
        ({"model": "x.gguf", "layers": "0:10"}, "--model and --layers"),
    ],
)
def test_no_model_refuses_settings_that_choose_a_model(tmp_path, flags, named):
    with pytest.raises(ConfigError, match=f"--no-model contradicts {named}"):
        resolve(NodeSettings, flags={"no_model": True, **flags})
    path = write(tmp_path, "[node]\nno_model = true\n")  # the same, whichever layer says it
    with pytest.raises(ConfigError, match="--no-model contradicts"):
        resolve(NodeSettings, flags=flags, config=path)
    assert resolve(NodeSettings, config=path).settings.no_model


def test_a_draft_model_is_for_a_pipeline_stage_only(tmp_path):
    with pytest.raises(ConfigError, match="--draft-model is for a pipeline stage"):
        resolve(NodeSettings, flags={"draft_model": str(tmp_path / "small.gguf")})
    staged = resolve(NodeSettings, flags={"draft_model": str(tmp_path / "small.gguf"), "layers": "0:10"})
    assert staged.settings.draft_model == tmp_path / "small.gguf"


def test_a_secret_is_never_echoed_in_an_error(monkeypatch):
    monkeypatch.setenv("DINET_API_KEY", "")
    with pytest.raises(ConfigError) as caught:
        resolve(GatewaySettings)
    assert "API key is empty" in str(caught.value) and "env DINET_API_KEY" in str(caught.value)
    monkeypatch.setenv("DINET_API_KEY", "sk-secret")
    with pytest.raises(ConfigError) as caught:
        resolve(GatewaySettings, flags={"port": "x", "host": "0.0.0.0"})
    assert "sk-secret" not in str(caught.value)


def test_file_values_are_checked_against_the_role_that_reads_them(tmp_path):
    path = write(tmp_path, "[node]\nthreads = 0\n")
    with pytest.raises(ConfigError, match="threads = 0"):
        resolve(NodeSettings, config=path)
    assert resolve(ClientSettings, config=path).settings  # a client does not read [node]


def test_the_example_file_in_the_docs_is_valid_for_every_role(tmp_path):
    docs = (Path(__file__).parents[1] / "docs" / "settings.md").read_text()
    example = docs.split("```toml\n", 1)[1].split("```", 1)[0]
    path = write(tmp_path, example)
    assert resolve(NodeSettings, config=path).settings.threads == 1
    assert resolve(ClientSettings, config=path).settings.verify_rate == 0.1
    gateway = resolve(GatewaySettings, config=path).settings
    assert (gateway.port, gateway.request_timeout_s, gateway.mdns) == (8080, 60, False)
