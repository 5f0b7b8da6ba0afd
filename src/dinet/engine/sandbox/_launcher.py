"""The sandbox launcher: `python -m dinet.engine.sandbox._launcher POLICY_JSON -- COMMAND...`.

It confines itself, then becomes COMMAND (execve keeps every restriction), so any
worker kind runs sandboxed without code of its own. What it applies, each step on
its own and skipped with a warning where this machine cannot do it:

1. Network: a fresh network namespace (no interfaces but a downed loopback). As root
   directly; otherwise inside a new user namespace, which most distributions allow
   unprivileged users. Seccomp and Landlock below refuse sockets in any case.
2. Files: Landlock (read only what the policy lists plus the system and Python
   directories; write nowhere). Without Landlock, in the private mount namespace of
   step 1, the model's directory is bind-mounted read-only.
3. Resource limits: address space (if set), open files, file size (the log, which is
   the worker's inherited stderr, may grow by a budget; SIGXFSZ is ignored so an
   over-long write fails instead of killing the worker), no core dumps.
4. Seccomp: no sockets, no new processes, no ptrace (see `_lsm`).

What took effect goes to COMMAND in the environment variable DINET_SANDBOX (JSON),
so the worker can report it to the node. Standard library only: it runs before
every worker starts and must cost milliseconds.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import signal
import stat
import sys
from dataclasses import asdict, dataclass, field

from dinet.engine.sandbox import _lsm

ENV_STATUS = "DINET_SANDBOX"
EXIT_EXEC_FAILED = 127

_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_NOATIME, _MS_NODIRATIME, _MS_BIND = 32, 1024, 2048, 4096
_MS_REC, _MS_PRIVATE, _MS_RELATIME = 16384, 1 << 18, 1 << 21
# statvfs flags that a bind remount inside a user namespace must keep (else EPERM).
_KEEP = {
    os.ST_NOSUID: _MS_NOSUID, os.ST_NODEV: _MS_NODEV, os.ST_NOEXEC: _MS_NOEXEC,
    os.ST_NOATIME: _MS_NOATIME, os.ST_NODIRATIME: _MS_NODIRATIME, os.ST_RELATIME: _MS_RELATIME,
}  # fmt: skip
# Of /proc only the worker's own entries (Landlock resolves /proc/self once, here, to
# the pid the worker keeps across exec) and CPU and memory facts: never another
# process's environment or command line.
_SYSTEM_READABLE = (
    "/usr", "/lib", "/lib64", "/lib32", "/bin", "/sys",
    "/proc/self", "/proc/cpuinfo", "/proc/meminfo", "/proc/stat",
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
    "/etc/nsswitch.conf", "/etc/passwd", "/etc/group",
    "/dev/null", "/dev/zero", "/dev/urandom", "/dev/random",
)  # fmt: skip
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Policy:
    """What to confine. `readable`: paths the command needs beyond the system and
    Python directories (the model file, the package's source). `protect`: files to
    keep read-only when only the mount-namespace fallback is available."""

    readable: list[str] = field(default_factory=list)
    protect: list[str] = field(default_factory=list)
    memory_mb: int | None = None
    max_open_files: int = 256
    log_budget_mb: int = 64
    # Each mechanism can be switched off (tests use this to prove the fallbacks).
    namespaces: bool = True
    landlock: bool = True
    seccomp: bool = True

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Policy:
        return cls(**json.loads(text))


def _unshare(flags: int) -> int:
    if sys.platform != "linux":
        return errno.EOPNOTSUPP
    return 0 if _libc.unshare(ctypes.c_int(flags)) == 0 else ctypes.get_errno()


def _new_namespaces(with_mounts: bool) -> str:
    """Enter a new network (and mount) namespace: "root" or "user" (how), or raise."""
    flags = _CLONE_NEWNET | (_CLONE_NEWNS if with_mounts else 0)
    if _unshare(flags) == 0:
        return "root"
    uid, gid = os.getuid(), os.getgid()
    err = _unshare(_CLONE_NEWUSER | flags)
    if err:
        raise OSError(err, "unshare(CLONE_NEWUSER|CLONE_NEWNET)")
    # Map our own ids into the namespace, so files show their owners. Access checks use
    # the real ids either way; uid 0 without CAP_SETFCAP may not map itself, and stays
    # "nobody" inside.
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        try:
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        except OSError:
            break
    return "user"


def _mount(source: str | None, target: str, flags: int) -> None:
    src = source.encode() if source is not None else None
    if _libc.mount(src, target.encode(), None, ctypes.c_ulong(flags), None) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target}")


def _bind_read_only(paths: list[str]) -> None:
    _mount(None, "/", _MS_REC | _MS_PRIVATE)  # nothing we mount may leak to the host
    for path in paths:
        directory = os.path.dirname(os.path.realpath(path))  # also no unlink/replace inside
        _mount(directory, directory, _MS_BIND | _MS_REC)
        kept = os.statvfs(directory).f_flag
        extra = sum(ms for st, ms in _KEEP.items() if kept & st)
        _mount(None, directory, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | extra)


def _set_limits(policy: Policy, warnings: list[str]) -> dict[str, int]:
    """Set the rlimits; returns those set (a platform may refuse some: then a warning)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = min(policy.max_open_files, hard if hard != resource.RLIM_INFINITY else policy.max_open_files)
    stderr = os.fstat(2)
    log_size = stderr.st_size if stat.S_ISREG(stderr.st_mode) else 0
    wanted = [
        ("core", resource.RLIMIT_CORE, 0),
        ("open_files", resource.RLIMIT_NOFILE, nofile),
        ("file_size_bytes", resource.RLIMIT_FSIZE, log_size + policy.log_budget_mb * 1024 * 1024),
    ]
    if policy.memory_mb is not None:
        wanted.append(("address_space_mb", resource.RLIMIT_AS, policy.memory_mb * 1024 * 1024))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # kept across exec: EFBIG instead of death
    limits: dict[str, int] = {}
    for name, which, value in wanted:
        try:
            resource.setrlimit(which, (value, value))
            limits[name] = value >> 20 if which == resource.RLIMIT_AS else value
        except (OSError, ValueError) as exc:
            warnings.append(f"no {name} limit ({exc})")
    return limits


def _readable(policy: Policy, command: list[str]) -> list[str]:
    python = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    here = [p for p in sys.path if p and os.path.isabs(p)]
    exe = os.path.dirname(os.path.realpath(command[0])) if command else ""
    libraries = os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)  # e.g. a BLAS in /opt
    found = [*_SYSTEM_READABLE, *python, *here, exe, *libraries, *policy.readable]
    return list(dict.fromkeys(p for p in found if p))


def apply(policy: Policy, command: list[str]) -> dict[str, object]:
    """Confine this process; returns what took effect (and what did not, in `warnings`)."""
    network: list[str] = []  # what cuts the network off
    read_only: list[str] = []  # what keeps the protected files read-only
    warnings: list[str] = []
    files, no_fork = None, False
    use_landlock = policy.landlock and _lsm.landlock_abi() > 0
    need_mounts = bool(policy.protect) and not use_landlock
    if policy.namespaces:
        try:
            how = _new_namespaces(with_mounts=need_mounts)
            network.append("netns" if how == "root" else "userns-netns")
        except OSError as exc:
            warnings.append(f"no private network namespace ({exc.strerror or exc})")
            need_mounts = False
        if need_mounts:
            try:
                _bind_read_only(policy.protect)
                read_only.append("mount")
            except OSError as exc:
                warnings.append(f"no read-only mount of the model ({exc.strerror or exc})")
    limits = _set_limits(policy, warnings)
    seccomp = policy.seccomp
    try:
        _lsm.no_new_privs()
    except OSError as exc:
        warnings.append(f"no_new_privs failed ({exc.strerror}): no Landlock, no seccomp")
        use_landlock = seccomp = False
    if use_landlock:
        try:
            scopes = _lsm.landlock_restrict(_readable(policy, command), ["/dev/null"])
            files = "landlock"
            read_only.append("landlock")
            if scopes["tcp"]:
                network.append("landlock-tcp")
        except OSError as exc:
            warnings.append(f"Landlock failed ({exc.strerror or exc})")
    elif policy.landlock:
        warnings.append("Landlock is not available in this kernel: the worker can read the node's files")
    if seccomp and _lsm.seccomp_supported():
        try:
            _lsm.seccomp_install()
            network.append("seccomp")
            no_fork = True
        except OSError as exc:
            warnings.append(f"seccomp filter failed ({exc.strerror or exc})")
    elif seccomp:
        warnings.append("no seccomp filter for this CPU architecture")
    if not network:
        warnings.append("the worker has network access")
    if policy.protect and not read_only:
        warnings.append("the model file is writable by the worker")
    return {
        "network": network, "files": files, "model_read_only": read_only, "no_fork": no_fork,
        "limits": limits, "warnings": warnings,
    }  # fmt: skip


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python -m dinet.engine.sandbox._launcher POLICY_JSON -- COMMAND...\n")
        return 2
    policy, command = Policy.from_json(argv[0]), argv[2:]
    status = apply(policy, command)
    os.environ[ENV_STATUS] = json.dumps(status, separators=(",", ":"))
    try:
        os.execv(command[0], command)
    except OSError as exc:
        sys.stderr.write(f"sandbox: cannot run {command[0]}: {exc}\n")
    return EXIT_EXEC_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
