"""The owner's side of the sandbox: a worker's command line and environment, its status.

`sandboxed` prefixes a command with the launcher (`dinet.engine.sandbox._launcher`),
which confines itself and then execs the command: no network (a private network
namespace, a seccomp filter refusing sockets, Landlock refusing TCP), the model
read-only and the rest of the file system unreadable (Landlock, or a read-only bind
mount where Landlock is missing), no new processes, and resource limits. Each mechanism
the machine lacks is skipped and named in `SandboxStatus.warnings`; owners log those
once (`warn_once`) and expose the status (the node puts it in `din node --json` and its
node file). In the worker, `current_status` reads what its launcher applied.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from dinet.engine.sandbox._launcher import ENV_STATUS, Policy

logger = logging.getLogger(__name__)

# The directory that holds dinet/ (src/ when run from source, else site-packages): the
# launcher imports dinet from it, under -P and a sandbox that reads only what it lists.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])

_warned: set[str] = set()


class SandboxStatus(BaseModel):
    """What confines a worker, as its launcher applied it."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    network: tuple[str, ...]  # what cuts it off: "netns" | "userns-netns", "landlock-tcp", "seccomp"
    files: str | None  # "landlock": reads limited to its own files, writes refused
    model_read_only: tuple[str, ...]  # "landlock" and/or "mount"
    no_fork: bool  # seccomp refuses new processes (threads are allowed)
    limits: dict[str, int]  # rlimits set: core, open_files, file_size_bytes, address_space_mb
    warnings: tuple[str, ...]  # protections this machine could not apply


UNSANDBOXED = SandboxStatus(
    network=(), files=None, model_read_only=(), no_fork=False, limits={},
    warnings=("the sandbox is switched off: the worker runs with the node's own rights",),
)  # fmt: skip


def sandboxed(
    command: list[str],
    *,
    readable: list[Path] = (),  # type: ignore[assignment]
    protect: list[Path] = (),  # type: ignore[assignment]
    memory_mb: int | None = None,
    max_open_files: int = 256,
    log_budget_mb: int = 64,
    namespaces: bool = True,
    landlock: bool = True,
    seccomp: bool = True,
) -> list[str]:
    """`command`, run under the sandbox. `readable`: files or directories it needs beyond
    the system's and Python's own (e.g. the model); `protect`: files that must stay
    read-only. The mechanism switches exist for tests of the fallbacks."""
    policy = Policy(
        readable=[_PACKAGE_ROOT, *(str(Path(p).resolve()) for p in readable)],
        protect=[str(Path(p).resolve()) for p in protect],
        memory_mb=memory_mb,
        max_open_files=max_open_files,
        log_budget_mb=log_budget_mb,
        namespaces=namespaces,
        landlock=landlock,
        seccomp=seccomp,
    )
    # -P: the launcher's sys.path (which Landlock lets it read) must not include the cwd.
    launcher = [sys.executable, "-P", "-m", "dinet.engine.sandbox._launcher", policy.to_json(), "--"]
    return launcher + command


# What a worker may inherit of the node's environment: locale, paths, and the knobs of
# the numeric libraries. Anything else (an API key, cloud credentials) stays with the node.
_ENV_KEEP = {
    "PATH", "HOME", "USER", "LANG", "TZ", "TMPDIR", "LD_LIBRARY_PATH", "TERM",
    "DINET_ALLOW_LIARS",  # testing only: the worker checks it again before it lies
}  # fmt: skip
_ENV_KEEP_PREFIXES = (
    "LC_", "PYTHON", "OMP_", "GOMP_", "KMP_", "OPENBLAS_", "MKL_", "GGML_", "LLAMA_", "TORCH_",
    "TOKENIZERS_",
)  # fmt: skip


def launcher_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a worker: the node's, less anything it need not know, and one
    in which the launcher finds `dinet` even when it is not installed."""
    given = os.environ if env is None else env
    out = {k: v for k, v in given.items() if k in _ENV_KEEP or k.startswith(_ENV_KEEP_PREFIXES)}
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, out.get("PYTHONPATH")]))
    out["PYTHONDONTWRITEBYTECODE"] = "1"  # the sandbox refuses writes; do not even try
    return out  # never ENV_STATUS: only the launcher may say what is in force


def current_status() -> SandboxStatus | None:
    """In a worker: the sandbox its launcher applied, None if it was started without one."""
    raw = os.environ.get(ENV_STATUS)
    if raw is None:
        return None
    try:
        return SandboxStatus.model_validate_json(raw)
    except ValidationError:
        return None


def warn_once(status: SandboxStatus) -> None:
    """Log each missing protection once per process, however often workers restart."""
    for warning in status.warnings:
        if warning not in _warned:
            _warned.add(warning)
            logger.warning("engine sandbox: %s", warning)
