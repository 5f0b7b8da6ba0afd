"""Tiny TCP programs to run on lab hosts (standard library only), and helpers to start them.

    python probe.py serve PORT             listen on 0.0.0.0:PORT (0: any) with SO_REUSEPORT;
                                           prints {"port": P}, then one JSON line per
                                           connection it accepts; stops at end of stdin.
                                           It answers UDP datagrams to the same port with
                                           the "IP:PORT" they came from.
                                           A connection's first line asks for:
                                             whoami  -> "IP:PORT" it was seen from
                                             send N  -> N bytes of `payload(N)`, then close
                                             zeros N -> N zero bytes (not hashed: for speed)
    python probe.py connect HOST PORT REQUEST [--bind-port P] [--timeout S] [--hold]
                                           connect, send REQUEST, read the whole reply;
                                           prints {"ok", "connect_ms", "transfer_ms",
                                           "local", "reply"
                                           or "sha256" and "bytes", "error"}; with --hold
                                           it keeps the connection open until end of stdin.
    python probe.py punch PEER_IP PEER_PORT --bind-port P [--name X] [--timeout S]
                                           TCP simultaneous open: waits for a line on
                                           stdin ("go"), then connects from P to the peer
                                           again and again until a connection stands;
                                           both ends send their name and read the other's.
    python probe.py udp-whoami HOST PORT --bind-port P
                                           {"ok", "reply"}: whom a UDP server saw us as.
    python probe.py udp-punch PEER_IP PEER_PORT --bind-port P [--name X] [--timeout S]
                                           UDP hole punching: send our name to the peer
                                           every 50 ms until we hear its name, then a few
                                           more times (so it hears us too); {"ok", "heard"}.

Use `argv(...)` to build the command line for `NatLab.popen` / `NatLab.run`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import selectors
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

PROBE = Path(__file__)


def argv(*args: object) -> list[str]:
    """`python probe.py ARGS...`, to run on a lab host."""
    return [sys.executable, str(PROBE), *(str(a) for a in args)]


def payload(size: int) -> bytes:
    """The bytes `send N` sends: seeded, so a receiver's hash can be checked."""
    return random.Random(size).randbytes(size)


def read_json_line(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The next JSON line `process` prints, within `timeout` seconds."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"no output from {process.args!r} in {timeout} s")
    line = process.stdout.readline()
    if not line:
        raise EOFError(f"{process.args!r} ended (exit code {process.wait()}) without output")
    answer: dict[str, Any] = json.loads(line)
    return answer


def _reusable_socket(bind_port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("0.0.0.0", bind_port))
    return sock


def _endpoint(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def _say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def _serve_one(conn: socket.socket, peer: tuple[str, int]) -> None:
    with conn:
        request = conn.makefile("rb").readline().decode().split()
        if request == ["whoami"]:
            conn.sendall(f"{peer[0]}:{peer[1]}\n".encode())
        elif len(request) == 2 and request[0] == "send":
            conn.sendall(payload(int(request[1])))
        elif len(request) == 2 and request[0] == "zeros":  # for throughput: nothing to compute
            block, left = bytes(1 << 20), int(request[1])
            while left > 0:
                conn.sendall(block[: min(left, len(block))])
                left -= len(block)


def _udp_socket(bind_port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", bind_port))
    return sock


def serve(port: int) -> None:
    server = _reusable_socket(port)
    server.listen(64)
    port = server.getsockname()[1]
    udp = _udp_socket(port)
    _say(port=port)

    def answer_datagrams() -> None:
        while True:
            _, peer = udp.recvfrom(2048)
            udp.sendto(_endpoint(peer).encode(), peer)

    threading.Thread(target=answer_datagrams, daemon=True).start()

    def accept_forever() -> None:
        while True:
            conn, peer = server.accept()
            _say(accepted=f"{peer[0]}:{peer[1]}")
            threading.Thread(target=_serve_one, args=(conn, peer), daemon=True).start()

    threading.Thread(target=accept_forever, daemon=True).start()
    sys.stdin.read()  # until the lab or the test closes our stdin


def connect(host: str, port: int, request: str, bind_port: int, timeout: float, hold: bool) -> None:
    sock = _reusable_socket(bind_port)
    sock.settimeout(timeout)
    started = time.monotonic()
    try:
        sock.connect((host, port))
    except OSError as error:
        _say(ok=False, error=f"{type(error).__name__}: {error}")
        return
    connect_ms = (time.monotonic() - started) * 1000.0
    local = _endpoint(sock.getsockname())
    sock.sendall(request.encode() + b"\n")
    digest, size, first = hashlib.sha256(), 0, b""
    hashing = not request.startswith("zeros")
    while chunk := sock.recv(1 << 20):
        if hashing:
            digest.update(chunk)
        size += len(chunk)
        first = first or chunk
        if hold and request == "whoami" and first.endswith(b"\n"):
            break
    transfer_ms = (time.monotonic() - started) * 1000.0 - connect_ms
    result: dict[str, object] = {
        "ok": True,
        "connect_ms": connect_ms,
        "transfer_ms": transfer_ms,
        "local": local,
    }
    if request == "whoami":
        result["reply"] = first.decode().strip()
    else:
        result |= {"sha256": digest.hexdigest(), "bytes": size}
    _say(**result)
    if hold:
        sys.stdin.read()
    sock.close()


def punch(peer_ip: str, peer_port: int, bind_port: int, name: str, timeout: float) -> None:
    sys.stdin.readline()  # "go": both ends start together
    deadline = time.monotonic() + timeout
    attempts = 0
    last_error = ""
    while time.monotonic() < deadline:
        attempts += 1
        sock = _reusable_socket(bind_port)
        sock.settimeout(min(2.0, max(0.1, deadline - time.monotonic())))
        try:
            sock.connect((peer_ip, peer_port))
            sock.sendall(name.encode() + b"\n")
            heard = sock.makefile("rb").readline().decode().strip()
        except OSError as error:
            last_error = f"{type(error).__name__}: {error}"
            sock.close()
            time.sleep(0.05)  # a refused attempt returns at once; do not spin
            continue
        local = _endpoint(sock.getsockname())
        remote = _endpoint(sock.getpeername())
        sock.close()
        _say(ok=True, heard=heard, local=local, remote=remote, attempts=attempts)
        return
    _say(ok=False, error=last_error, attempts=attempts)


def udp_whoami(host: str, port: int, bind_port: int, timeout: float) -> None:
    sock = _udp_socket(bind_port)
    sock.settimeout(0.2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # datagrams get lost: ask again
        sock.sendto(b"whoami", (host, port))
        try:
            reply, _ = sock.recvfrom(2048)
        except TimeoutError:
            continue
        _say(ok=True, reply=reply.decode())
        return
    _say(ok=False, error="no answer")


def udp_punch(peer_ip: str, peer_port: int, bind_port: int, name: str, timeout: float) -> None:
    sock = _udp_socket(bind_port)
    sock.settimeout(0.05)
    deadline = time.monotonic() + timeout
    heard, sent_after = "", 0
    while time.monotonic() < deadline and sent_after < 10:
        sock.sendto(name.encode(), (peer_ip, peer_port))
        sent_after += bool(heard)
        try:
            data, source = sock.recvfrom(2048)  # waits up to 50 ms: the resend interval
        except TimeoutError:
            continue
        if source == (peer_ip, peer_port):
            heard = data.decode()
    _say(ok=bool(heard), heard=heard)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("serve")
    p.add_argument("port", type=int)
    p = commands.add_parser("connect")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("request")
    p.add_argument("--bind-port", type=int, default=0)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--hold", action="store_true")
    p = commands.add_parser("punch")
    p.add_argument("peer_ip")
    p.add_argument("peer_port", type=int)
    p.add_argument("--bind-port", type=int, required=True)
    p.add_argument("--name", default="")
    p.add_argument("--timeout", type=float, default=10.0)
    for command in ("udp-whoami", "udp-punch"):
        p = commands.add_parser(command)
        p.add_argument("host")
        p.add_argument("port", type=int)
        p.add_argument("--bind-port", type=int, required=True)
        p.add_argument("--name", default="")
        p.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    if args.command == "udp-whoami":
        udp_whoami(args.host, args.port, args.bind_port, args.timeout)
    elif args.command == "udp-punch":
        udp_punch(args.host, args.port, args.bind_port, args.name, args.timeout)
    elif args.command == "serve":
        serve(args.port)
    elif args.command == "connect":
        connect(args.host, args.port, args.request, args.bind_port, args.timeout, args.hold)
    else:
        punch(args.peer_ip, args.peer_port, args.bind_port, args.name, args.timeout)


if __name__ == "__main__":
    main()


class LineDriven:
    """A program on a lab host driven line by line: each command on its stdin is answered
    by one JSON line on its stdout (tests/reach/lab_client.py, bench/_reach_client.py)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process

    def reply(self, timeout: float) -> dict[str, Any]:
        return read_json_line(self.process, timeout)

    def command(self, line: str, timeout: float = 120) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self.reply(timeout)

    def close(self) -> None:
        """Close its stdin (it ends) and wait; killed if it does not end in 20 s."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
