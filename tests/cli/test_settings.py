"""Settings as a user gives them to `din`: flags, DINET_* variables and a --config file.

Precedence is checked through `--print-config --json`, which resolves exactly what the
command would run with and exits before starting anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import worker_pids
from typer.testing import CliRunner

from dinet.cli import app
from dinet.config import ROLES
from dinet.node.local_mesh import start_node

COMMANDS = {"node": "node", "client": "ask", "gateway": "gateway"}


PEER = "12D3KooWQK1wnefoLrcVHbbnf5tLzbopUd3K3bFAoJpA7YJgL5pV"  # RFC 8032 TEST 1 key: never real


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the developer's own DINET_* settings."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("DINET_")}, **extra}


def din(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dinet", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env or clean_env(),
    )


def effective(*args: str, **env: str) -> dict[str, dict[str, object]]:
    """`din ... --print-config --json`, in this process (click parses it as it would argv)."""
    done = CliRunner().invoke(
        app,
        [*args, "--print-config", "--json"],
        env={**{k: None for k in os.environ if k.startswith("DINET_")}, **env},
    )
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def refused(*args: str, **env: str) -> str:
    """The one line a command prints when a setting is bad (exit 1, no traceback)."""
    done = CliRunner().invoke(
        app, [*args, "--print-config"], env={**{k: None for k in os.environ if k.startswith("DINET_")}, **env}
    )
    assert done.exit_code == 1, done.output
    assert done.exception is None or isinstance(done.exception, SystemExit)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def origin(report: dict[str, dict[str, object]], name: str) -> tuple[object, object]:
    return report[name]["value"], report[name]["from"]


@pytest.mark.parametrize(
    ("command", "table", "field", "values"),
    [
        # (file, env, flag) values of one field, and of three others set in fewer layers.
        ("node", "node", "threads", ("3", "4", "5")),
        ("ask", "client", "request_timeout_s", ("30.0", "40.0", "50.0")),
        ("gateway", "gateway", "port", ("8001", "8002", "8003")),
    ],
)
def test_each_role_takes_flag_over_env_over_file_over_default(tmp_path, command, table, field, values):
    """One field set in all three layers, one in two, one in the file only, one nowhere."""
    file_value, env_value, flag_value = values
    runner_up = {"node": "max_queue", "client": "discover_timeout_s", "gateway": "refresh_s"}[table]
    config = tmp_path / "dinet.toml"
    config.write_text(f"[{table}]\n{field} = {file_value}\n{runner_up} = 9\n")
    flag = "--" + field.replace("_", "-")
    env = {f"DINET_{field.upper()}": env_value}
    args = [command, "--config", str(config)] + (["hi"] if command == "ask" else [])

    assert origin(effective(*args[:1]), field)[1] == "default"
    assert origin(effective(*args), field) == (float(file_value), "file")
    assert origin(effective(*args, **env), field) == (float(env_value), "env")
    report = effective(*args, flag, flag_value, **env)
    assert origin(report, field) == (float(flag_value), "flag")
    assert origin(report, runner_up) == (9, "file")  # a flag left off overrides nothing
    assert origin(report, "mdns") == (True, "default")


def test_the_precedence_holds_in_a_real_process_too(tmp_path):
    config = tmp_path / "dinet.toml"
    config.write_text('[node]\nthreads = 3\nregion = "from-file"\nprice = 0.5\n')
    done = din(
        "node",
        "--print-config",
        "--json",
        "--config",
        str(config),
        "--price",
        "0.125",
        env=clean_env(DINET_REGION="from-env", DINET_PRICE="0.25"),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert origin(report, "threads") == (3, "file")
    assert origin(report, "region") == ("from-env", "env")
    assert origin(report, "price") == (0.125, "flag")
    assert origin(report, "max_queue") == (8, "default")


def test_a_boolean_left_off_the_command_line_keeps_the_environments_value():
    assert origin(effective("peers", "--no-mdns"), "mdns") == (False, "flag")
    assert origin(effective("peers", DINET_MDNS="false"), "mdns") == (False, "env")
    assert origin(effective("peers", "--mdns", DINET_MDNS="false"), "mdns") == (True, "flag")


def test_a_setting_named_no_something_is_one_flag():
    """`--no-model`, not `--no-model/--no-no-model`; left off, the environment decides."""
    assert origin(effective("node", "--no-model"), "no_model") == (True, "flag")
    assert origin(effective("node"), "no_model") == (False, "default")
    assert origin(effective("node", DINET_NO_MODEL="true"), "no_model") == (True, "env")
    assert "--no-no-model" not in CliRunner().invoke(app, ["node", "--help"], env={"COLUMNS": "200"}).stdout


def test_the_config_file_can_come_from_dinet_config(tmp_path):
    config = tmp_path / "dinet.toml"
    config.write_text("[client]\nverify_rate = 0.5\n")
    report = effective("chat", DINET_CONFIG=str(config))
    assert report["verify_rate"] == {"value": 0.5, "from": "file", "source": f"{config} [client]"}


def test_every_setting_is_a_flag_of_its_command_with_help():
    """A field added to a role's model is a flag at once: nothing to write by hand."""
    for table, role in ROLES.items():
        done = CliRunner().invoke(app, [COMMANDS[table], "--help"], env={"COLUMNS": "300"})
        assert done.exit_code == 0
        for name, field in role.model_fields.items():
            assert field.description, f"{role.__name__}.{name} has no description"
            assert "--" + name.replace("_", "-") in done.stdout, name
            assert f"DINET_{name.upper()}" in done.stdout, name


def test_the_spellings_of_before_still_work():
    report = effective(
        "ask",
        "hi",
        "-b",
        f"/ip4/127.0.0.1/tcp/1/p2p/{PEER}",
        "--bootstrap",
        f"/ip4/127.0.0.1/tcp/2/p2p/{PEER}",
        "--timeout",
        "3",
        "--no-mdns",
        "--home",
        "/tmp/x",
        "--max-price",
        "0.5",
        "--verify-rate",
        "0.1",
    )
    assert report["bootstrap"]["value"] == [
        f"/ip4/127.0.0.1/tcp/1/p2p/{PEER}",
        f"/ip4/127.0.0.1/tcp/2/p2p/{PEER}",
    ]
    assert origin(report, "discover_timeout_s") == (3.0, "flag")
    assert report["discover_timeout_s"]["source"] == "--discover-timeout-s/--timeout"
    assert (report["max_price"]["value"], report["verify_rate"]["value"]) == (0.5, 0.1)
    report = effective(
        "node",
        "--threads",
        "2",
        "--max-concurrent",
        "2",
        "--api-port",
        "0",
        "--layers",
        "0:10",
        "--shard-kv-mb",
        "64",
        "--no-sandbox",
        "--no-priority",
        "--liar",
        "stage-noise",  # a stage's lie: a whole node's (random) is refused with --layers
        DINET_ALLOW_LIARS="1",
        DINET_API_KEY="sk-1",
    )
    assert report["layers"]["value"] == "0:10" and report["liar"]["value"] == "stage-noise"
    assert report["api_key"] == {"value": "**********", "from": "env", "source": "DINET_API_KEY"}
    report = effective("gateway", "--host", "0.0.0.0", "--port", "0", "--timeout", "2", "--api-key", "sk-2")
    assert report["host"]["value"] == "0.0.0.0" and report["api_key"]["value"] == "**********"


def test_print_config_as_a_table_names_each_source(tmp_path):
    config = tmp_path / "dinet.toml"
    config.write_text("[node]\nregion = 'eu-west'\n")
    done = CliRunner().invoke(
        app,
        ["node", "--print-config", "--config", str(config), "--threads", "1"],
        env={"DINET_MAX_QUEUE": "3", "COLUMNS": "300"},
    )
    assert done.exit_code == 0, done.output
    rows = {line.split("│")[1].strip(): line for line in done.stdout.splitlines() if line.count("│") == 4}
    assert "flag --threads" in rows["threads"]
    assert "env DINET_MAX_QUEUE" in rows["max_queue"]
    assert f"file {config} [node]" in rows["region"]
    assert "default" in rows["price"]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["node", "--threads", "two"], {}, "threads = 'two' (from flag --threads)"),
        (["node"], {"DINET_THREADS": "0"}, "threads = '0' (from env DINET_THREADS)"),
        (["node", "--liar", "random"], {}, "liar = 'random' (from flag --liar)"),
        (["gateway", "--port", "70000"], {}, "port = '70000' (from flag --port)"),
        (["gateway", "--host", "0.0.0.0"], {}, "refusing to listen on 0.0.0.0 without an API key"),
        (["ask", "hi"], {"DINET_VERIFY_RATE": "2"}, "verify_rate = '2' (from env DINET_VERIFY_RATE)"),
        (
            ["peers"],
            {"DINET_BOOTSTRAP": "/ip4/1.2.3.4/tcp/1"},
            "(from env DINET_BOOTSTRAP): not a peer multiaddr",
        ),
        (["node", "--no-model", "--layers", "0:10"], {}, "--no-model contradicts --layers"),
        (["node", "--config", "/nonexistent/dinet.toml"], {}, "cannot read config file /nonexistent"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_field_and_source(args, env, expected):
    assert expected in refused(*args, **env)


def test_a_bad_file_key_is_one_line_from_a_real_process(tmp_path):
    config = tmp_path / "dinet.toml"
    config.write_text("[gateway]\nprot = 8080\n")
    done = din("gateway", "--config", str(config))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"error: config file {config}: unknown key 'prot' in [gateway] (did you mean 'port'?)"
    )


def test_the_threads_setting_from_the_environment_reaches_the_engine(tmp_path: Path):
    """`DINET_THREADS=1 din node`: no flag given, so the variable decides the worker's threads."""
    node = start_node(tmp_path / "node", threads=None, env={"DINET_THREADS": "1"})
    try:
        (worker,) = worker_pids(node.process.pid)
        argv = Path(f"/proc/{worker}/cmdline").read_bytes().split(b"\0")
        assert argv[argv.index(b"--threads") + 1] == b"1"
    finally:
        node.stop()


def test_client_settings_reach_din_ask(tmp_path, mesh):
    """request_timeout_s from the environment limits the answer; verify_rate from the file
    has it checked by another peer."""
    base = ["ask", "--json", "--no-mdns", "--home", str(tmp_path), "--bootstrap", mesh.bootstrap[0]]
    done = din(
        *base, "--max-tokens", "200", "Tell a long story.", env=clean_env(DINET_REQUEST_TIMEOUT_S="0.001")
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "error: no complete answer in the time allowed"
    config = tmp_path / "dinet.toml"
    config.write_text("[client]\nverify_rate = 1.0\n")
    done = din(*base, "--config", str(config), "--max-tokens", "8", "Name a colour.")
    assert done.returncode == 0, done.stderr
    verification = json.loads(done.stdout)["verification"]
    assert verification is not None and verification["verified"] is True
