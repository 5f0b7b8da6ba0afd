"""Run inside the sandbox by the tests: tries what a hostile worker would, reports JSON.

    python _sandbox_probe.py REPORT PORT MODEL SECRET WRITE_DIR STDERR_BYTES

Each attempt is recorded as 0 (it worked) or the errno it failed with. The report goes
to an inherited fd given by number (REPORT), since the sandbox forbids opening files.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import socket
import sys
import threading


def attempt(action) -> int:
    try:
        action()
    except OSError as exc:
        return exc.errno or -1
    return 0


def tcp_connect(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def udp_send(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"leak", ("127.0.0.1", port))


def tcp6_socket() -> None:
    socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()


def raw_socket_then_connect(port: int) -> None:
    """Past socket(): only meaningful when seccomp is off (Landlock refuses connect)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(2)
        s.connect(("127.0.0.1", port))
    finally:
        s.close()


def fork() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def thread() -> None:
    done = []
    t = threading.Thread(target=lambda: done.append(1))
    t.start()
    t.join()
    if not done:
        raise OSError(errno.EAGAIN, "thread did not run")


def flood(fd: int, total: int) -> None:
    chunk = b"x" * 65536
    while total > 0:
        total -= os.write(fd, chunk[:total])  # a write reaching the limit is cut short, the next fails


def main() -> None:
    report_fd, port, model, secret, write_dir, stderr_bytes = sys.argv[1:7]
    port_n = int(port)
    results = {
        "tcp": attempt(lambda: tcp_connect(port_n)),
        "tcp_connect_only": attempt(lambda: raw_socket_then_connect(port_n)),
        "udp": attempt(lambda: udp_send(port_n)),
        "tcp6": attempt(tcp6_socket),
        "read_model": attempt(lambda: open(model, "rb").read(4)),
        "write_model": attempt(lambda: open(model, "r+b").close()),
        "truncate_model": attempt(lambda: os.truncate(model, 0)),
        "unlink_model": attempt(lambda: os.unlink(model)),
        "create_file": attempt(lambda: open(os.path.join(write_dir, "dropped"), "wb").close()),
        "read_secret": attempt(lambda: open(secret, "rb").read()),
        "fork": attempt(fork),
        "thread": attempt(thread),
        "signal_parent": attempt(lambda: os.kill(os.getppid(), 0)),
        "parent_environ": attempt(lambda: open(f"/proc/{os.getppid()}/environ", "rb").read()),
    }
    # A long write to the log (stderr): past the file-size budget it must fail, not kill us.
    results["stderr_write"] = attempt(lambda: flood(2, int(stderr_bytes)))
    limits = {
        name: resource.getrlimit(getattr(resource, name))[0]
        for name in ("RLIMIT_AS", "RLIMIT_NOFILE", "RLIMIT_CORE", "RLIMIT_FSIZE")
    }
    report = {"results": results, "limits": limits, "status": os.environ.get("DINET_SANDBOX")}
    os.write(int(report_fd), json.dumps(report).encode())


if __name__ == "__main__":
    main()
