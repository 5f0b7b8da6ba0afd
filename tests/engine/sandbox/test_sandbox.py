"""The worker sandbox, proven from inside: a probe runs under the real launcher and
tries what a hostile worker would (connect out, write the model, read the node's
files, fork, flood its log). Each mechanism is also tested alone, so that one of them
failing cannot hide behind another; and a real llama.cpp worker runs confined."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tests.engine._engine_helpers import chat, collect

from dinet.engine import WorkerEngine
from dinet.engine.sandbox import SandboxStatus, _wrap, current_status, launcher_env, sandboxed, warn_once
from dinet.engine.sandbox._lsm import landlock_abi, seccomp_supported

PROBE = Path(__file__).with_name("_sandbox_probe.py")
LANDLOCK = landlock_abi()
needs_landlock = pytest.mark.skipif(LANDLOCK == 0, reason="this kernel has no Landlock")
needs_seccomp = pytest.mark.skipif(not seccomp_supported(), reason="no seccomp filter for this CPU")
DENIED = {errno.EPERM, errno.EACCES}


class Target:
    """What the probe attacks: a listening TCP port, a model file, a secret beside the node."""

    def __init__(self, root: Path) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0)
        self.port = self.listener.getsockname()[1]
        (root / "store").mkdir()
        self.model = root / "store" / "model.gguf"
        self.model.write_bytes(b"GGUF" + bytes(1000))
        (root / "home").mkdir()
        self.secret = root / "home" / "identity.key"
        self.secret.write_bytes(b"private key")
        self.log = root / "worker.log"

    def accepted_anything(self) -> bool:
        try:
            self.listener.accept()[0].close()
            return True
        except BlockingIOError:
            return False

    def intact(self) -> bool:
        return self.model.read_bytes() == b"GGUF" + bytes(1000)


@pytest.fixture
def target(tmp_path: Path):
    t = Target(tmp_path)
    yield t
    t.listener.close()


def probe(target: Target, *, stderr_bytes: int = 10, prefix: tuple[str, ...] = (), **options) -> dict:
    """Run the probe in the sandbox; its report, with the sandbox's own status parsed."""
    command = [sys.executable, str(PROBE)]
    argv = sandboxed(command, readable=[PROBE, target.model], protect=[target.model], **options)
    read_end, write_end = os.pipe()
    args = [str(write_end), str(target.port), str(target.model), str(target.secret),
            str(target.model.parent), str(stderr_bytes)]  # fmt: skip
    with target.log.open("ab") as log:
        done = subprocess.run(
            [*prefix, *argv, *args], stderr=log, env=launcher_env(), pass_fds=(write_end,), timeout=60
        )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        raw = f.read()
    assert done.returncode == 0, target.log.read_text()[-2000:]
    report = json.loads(raw)
    report["status"] = SandboxStatus.model_validate_json(report["status"])
    return report


@needs_landlock
@needs_seccomp
def test_the_full_sandbox_refuses_network_writes_foreign_reads_and_fork(target: Target) -> None:
    report = probe(target)
    r, status = report["results"], report["status"]
    assert r["read_model"] == 0 and r["thread"] == 0  # what a worker needs still works
    for attempt in ("tcp", "tcp_connect_only", "udp", "tcp6", "fork"):
        assert r[attempt] in DENIED, attempt
    for attempt in ("write_model", "truncate_model", "unlink_model", "create_file", "read_secret"):
        assert r[attempt] == errno.EACCES, attempt
    assert r["parent_environ"] in DENIED  # the node's environment (API keys) stays private
    assert not target.accepted_anything() and target.intact()
    assert not (target.model.parent / "dropped").exists()
    assert status.network[0] in ("netns", "userns-netns") and "seccomp" in status.network
    assert status.files == "landlock" and status.model_read_only == ("landlock",)
    assert status.no_fork and status.warnings == ()
    if LANDLOCK >= 6:  # signals scoped: the worker cannot signal the node
        assert r["signal_parent"] == errno.EPERM


def test_the_network_namespace_alone_cuts_the_worker_off(target: Target) -> None:
    report = probe(target, landlock=False, seccomp=False)
    r = report["results"]
    assert r["tcp"] == errno.ENETUNREACH and r["tcp_connect_only"] == errno.ENETUNREACH
    assert r["udp"] == errno.ENETUNREACH
    assert r["fork"] == 0  # nothing else is in force: the namespace did it all
    assert not target.accepted_anything()
    assert report["status"].network in (("netns",), ("userns-netns",))


@needs_seccomp
def test_seccomp_alone_refuses_sockets_and_new_processes(target: Target) -> None:
    report = probe(target, namespaces=False, landlock=False)
    r = report["results"]
    for attempt in ("tcp", "tcp_connect_only", "udp", "tcp6", "fork"):
        assert r[attempt] == errno.EPERM, attempt
    assert r["thread"] == 0 and r["write_model"] == 0  # seccomp is not about files
    assert not target.accepted_anything()
    status = report["status"]
    assert status.network == ("seccomp",) and status.no_fork
    assert any("writable" in w for w in status.warnings)  # and says so


@needs_landlock
def test_landlock_alone_makes_the_model_read_only_even_for_root(target: Target) -> None:
    report = probe(target, namespaces=False, seccomp=False)
    r = report["results"]
    assert r["read_model"] == 0
    for attempt in ("write_model", "truncate_model", "unlink_model", "create_file", "read_secret"):
        assert r[attempt] == errno.EACCES, attempt
    assert target.intact()
    if LANDLOCK >= 4:  # TCP refused by Landlock itself
        assert r["tcp_connect_only"] == errno.EACCES and not target.accepted_anything()


def test_without_landlock_a_read_only_mount_protects_the_model(target: Target) -> None:
    report = probe(target, landlock=False, seccomp=False)
    r = report["results"]
    assert r["read_model"] == 0
    for attempt in ("write_model", "truncate_model", "unlink_model", "create_file"):
        assert r[attempt] == errno.EROFS, attempt
    assert target.intact() and report["status"].model_read_only == ("mount",)
    assert r["read_secret"] == 0  # a mount does not hide the rest: the status says so
    assert report["status"].files is None


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop rights")
def test_an_unprivileged_user_gets_the_same_isolation(target: Target) -> None:
    """Without capabilities (as a normal user), through a user namespace."""
    no_caps = ("setpriv", "--bounding-set", "-all", "--inh-caps", "-all")
    report = probe(target, prefix=no_caps, landlock=False, seccomp=False)
    assert report["status"].network == ("userns-netns",)
    assert report["results"]["tcp"] == errno.ENETUNREACH
    assert report["results"]["write_model"] == errno.EROFS and target.intact()
    if LANDLOCK and seccomp_supported():
        full = probe(target, prefix=no_caps)
        assert full["status"].files == "landlock" and "seccomp" in full["status"].network
        assert full["results"]["write_model"] == errno.EACCES


def test_resource_limits_hold_and_a_log_flood_fails_without_killing(target: Target) -> None:
    report = probe(target, memory_mb=2048, max_open_files=64, log_budget_mb=1, stderr_bytes=2 << 20)
    limits = report["limits"]
    assert limits["RLIMIT_AS"] == 2048 << 20
    assert limits["RLIMIT_NOFILE"] == 64 and limits["RLIMIT_CORE"] == 0
    assert limits["RLIMIT_FSIZE"] == report["status"].limits["file_size_bytes"]
    # 2 MB to a log allowed to grow by 1 MB: the write fails (EFBIG), the probe lives on.
    assert report["results"]["stderr_write"] == errno.EFBIG
    assert target.log.stat().st_size <= 1 << 20


def test_missing_protections_are_warned_once(
    target: Target, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = probe(target, namespaces=False, landlock=False, seccomp=False)
    status = report["status"]
    assert status.network == () and "the worker has network access" in status.warnings
    assert report["results"]["tcp"] == 0 and target.accepted_anything()  # and it is true
    monkeypatch.setattr(_wrap, "_warned", set())  # as in a fresh node process
    with caplog.at_level(logging.WARNING, logger="dinet.engine.sandbox._wrap"):
        warn_once(status)
        warn_once(status)  # a restarted worker: no second warning
    network = [r for r in caplog.records if "network access" in r.getMessage()]
    assert len(network) == 1


def test_a_status_comes_only_from_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DINET_SANDBOX", '{"network": ["netns"], "forged": true}')
    assert current_status() is None  # malformed: not believed
    assert "DINET_SANDBOX" not in launcher_env()  # never passed on from the node's own env


def test_the_worker_does_not_inherit_the_nodes_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DINET_API_KEY", "sk-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("OMP_PROC_BIND", "true")
    env = launcher_env()
    assert "DINET_API_KEY" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["OMP_PROC_BIND"] == "true" and env["PATH"] == os.environ["PATH"]


@needs_landlock
@needs_seccomp
async def test_a_real_worker_runs_confined_and_still_answers(model_path: Path) -> None:
    async with WorkerEngine(model_path, threads=1) as engine:
        status = engine.sandbox_status
        assert status is not None and status.warnings == ()
        assert status.files == "landlock" and "seccomp" in status.network
        pid = engine.pid
        proc = Path(f"/proc/{pid}/status").read_text()
        assert "\nSeccomp:\t2\n" in proc and "\nNoNewPrivs:\t1\n" in proc
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        run = await collect(engine, chat("Say hi", max_tokens=4))
        assert run.end.usage.completion_tokens >= 1
