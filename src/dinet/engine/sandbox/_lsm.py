"""Landlock and seccomp for the worker sandbox, through ctypes (stdlib only).

Both work without privileges once `no_new_privs` is set, both bind root as well
(root ignores file permission bits, not Landlock), and both survive `execve`, so
the launcher sets them up and then becomes the worker.

Landlock (Linux 5.13+, if the kernel enables it): the worker may read only the
paths it is given (its Python, its libraries, the model) and write nowhere except
/dev/null; files it inherited open (its log, its pipes) stay usable. From ABI 4
it may neither bind nor connect TCP sockets; from ABI 6 it may not signal
processes outside its sandbox (the node) nor reach abstract unix sockets.

Seccomp: a BPF filter that refuses socket(2) (every family: the worker talks to
the node through pipes it inherited), process creation (fork, vfork, clone
without CLONE_THREAD; clone3 answers ENOSYS so that libc falls back to clone,
whose flags the filter can read), and calls a worker never needs that would
reach beyond it (ptrace, process_vm_*, io_uring, bpf, namespaces, mount, keys).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import struct
import sys

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

# -- Landlock -----------------------------------------------------------------------

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # same on every arch
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_FILE_ONLY = _EXECUTE | _WRITE_FILE | _READ_FILE | (1 << 14) | (1 << 15)  # rights a file rule may carry
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1


def no_new_privs() -> None:
    if sys.platform != "linux":
        raise OSError(errno.EOPNOTSUPP, "no_new_privs is Linux only")
    # prctl(2) is variadic and checks that unused arguments are 0: pass full-width longs.
    zero = ctypes.c_ulong(0)
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), zero, zero, zero) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 where Landlock is missing or disabled."""
    if sys.platform != "linux":
        return 0  # syscall numbers mean other things elsewhere
    abi = _libc.syscall(
        ctypes.c_long(_SYS_CREATE_RULESET), None, ctypes.c_size_t(0), ctypes.c_uint(_CREATE_RULESET_VERSION)
    )
    return max(0, int(abi))


def landlock_restrict(readable: list[str], writable: list[str]) -> dict[str, bool]:
    """Restrict this process (and what it execs) to reading `readable` paths and
    writing `writable` files. Paths that do not exist are skipped. Returns which
    extra scopes took effect: {"tcp": ..., "signals": ...}. Needs no_new_privs."""
    abi = landlock_abi()
    if abi == 0:
        raise OSError(errno.EOPNOTSUPP, "Landlock is not available in this kernel")
    fs = _FS_RIGHTS_BY_ABI[max(k for k in _FS_RIGHTS_BY_ABI if k <= abi)]
    net = _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0
    scoped = _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL if abi >= 6 else 0
    # struct landlock_ruleset_attr grew a u64 field at ABI 4 and 6; pass the size we fill.
    fields = [fs] + ([net] if abi >= 4 else []) + ([scoped] if abi >= 6 else [])
    attr = ctypes.create_string_buffer(struct.pack(f"<{len(fields)}Q", *fields), 8 * len(fields))
    ruleset = _libc.syscall(
        ctypes.c_long(_SYS_CREATE_RULESET), attr, ctypes.c_size_t(8 * len(fields)), ctypes.c_uint(0)
    )
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    try:
        for path in readable:
            _allow(int(ruleset), path, _EXECUTE | _READ_FILE | _READ_DIR)
        for path in writable:
            _allow(int(ruleset), path, _READ_FILE | _WRITE_FILE)
        if _libc.syscall(ctypes.c_long(_SYS_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(int(ruleset))
    return {"tcp": bool(net), "signals": bool(scoped)}


def _allow(ruleset: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # absent here (e.g. /lib64 on some systems): nothing to allow
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= _FILE_ONLY
        # struct landlock_path_beneath_attr is packed: u64 allowed_access, s32 parent_fd.
        attr = ctypes.create_string_buffer(struct.pack("<Qi", access, fd), 12)
        call, kind = ctypes.c_long(_SYS_ADD_RULE), ctypes.c_int(_RULE_PATH_BENEATH)
        if _libc.syscall(call, ctypes.c_int(ruleset), kind, attr, ctypes.c_uint(0)):
            raise OSError(ctypes.get_errno(), f"landlock_add_rule({path})")
    finally:
        os.close(fd)


# -- seccomp ------------------------------------------------------------------------

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# Syscall numbers refused with EPERM, per architecture (aarch64 has no fork/vfork).
_DENIED = {
    "x86_64": {
        "socket": 41, "fork": 57, "vfork": 58, "ptrace": 101, "process_vm_readv": 310,
        "process_vm_writev": 311, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "bpf": 321, "userfaultfd": 323, "unshare": 272, "setns": 308,
        "mount": 165, "umount2": 166, "pivot_root": 155, "add_key": 248, "request_key": 249,
        "keyctl": 250, "perf_event_open": 298,
    },
    "aarch64": {
        "socket": 198, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "bpf": 280,
        "userfaultfd": 282, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39,
        "pivot_root": 41, "add_key": 217, "request_key": 218, "keyctl": 219, "perf_event_open": 241,
    },
}  # fmt: skip
_CLONE = {"x86_64": 56, "aarch64": 220}
_SECCOMP_NR = {"x86_64": 317, "aarch64": 277}
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_SPEC_ALLOW = 1 << 2
_CLONE3 = 435
_CLONE_THREAD = 0x00010000
_X32_BIT = 0x40000000

_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000


def seccomp_supported() -> bool:
    return sys.platform == "linux" and platform.machine() in _AUDIT_ARCH


def _filter(machine: str) -> list[tuple[int, int, int, int]]:
    """The BPF program: (code, jump-if-true, jump-if-false, k) per instruction."""
    eperm, enosys = _ERRNO | errno.EPERM, _ERRNO | errno.ENOSYS
    prog = [
        (_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        (_JEQ, 1, 0, _AUDIT_ARCH[machine]),
        (_RET, 0, 0, eperm),  # another ABI (32-bit compat calls): refused outright
        (_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
    ]
    if machine == "x86_64":
        prog += [(_JGE, 0, 1, _X32_BIT), (_RET, 0, 0, eperm)]  # x32 numbering
    for nr in _DENIED[machine].values():
        prog += [(_JEQ, 0, 1, nr), (_RET, 0, 0, eperm)]
    prog += [(_JEQ, 0, 1, _CLONE3), (_RET, 0, 0, enosys)]
    prog += [
        (_JEQ, 0, 4, _CLONE[machine]),
        (_LD_W_ABS, 0, 0, 16),  # low half of args[0], the clone flags (little-endian)
        (_JSET, 0, 1, _CLONE_THREAD),
        (_RET, 0, 0, _ALLOW),  # a thread
        (_RET, 0, 0, eperm),  # a new process
        (_RET, 0, 0, _ALLOW),
    ]
    return prog


def seccomp_install() -> None:
    """Install the filter on this process and its future threads. Needs no_new_privs."""
    machine = platform.machine()
    if machine not in _AUDIT_ARCH:
        raise OSError(errno.EOPNOTSUPP, f"no seccomp filter for {machine}")
    prog = _filter(machine)
    code = b"".join(struct.pack("<HBBI", *ins) for ins in prog)
    filters = ctypes.create_string_buffer(code, len(code))

    class _Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _Fprog(len(prog), ctypes.cast(filters, ctypes.c_void_p))
    # seccomp(2) with SPEC_ALLOW first: by default the kernel also turns on the Speculative
    # Store Bypass mitigation for a filtered process, which made a torch stage's steps ~6%
    # slower (4.94 against 4.63 ms, bench/stage_sandbox.py). That mitigation keeps code in
    # one address space from reading another part of it; the worker holds nothing of the
    # node's, so it buys nothing here (runc makes the same choice).
    done = _libc.syscall(
        ctypes.c_long(_SECCOMP_NR[machine]), ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
        ctypes.c_uint(SECCOMP_FILTER_FLAG_SPEC_ALLOW), ctypes.byref(fprog),
    )  # fmt: skip
    if (
        done != 0
        and _libc.prctl(
            PR_SET_SECCOMP,
            ctypes.c_ulong(SECCOMP_MODE_FILTER),
            ctypes.byref(fprog),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        )
        != 0
    ):  # fmt: skip  (a kernel before 4.17: the flag is unknown)
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
