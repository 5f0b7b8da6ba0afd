"""What one message costs on the wire a pipeline stage uses: py-libp2p vs plain TCP.

A hidden state plus its header is a ~2.4 KB frame. This times a frame and its echo
between two processes on loopback: over a kept libp2p stream (Noise + yamux, our
FramedStream, as /dinet/shard/1 uses) and over a plain trio TCP stream, alternated
in rounds; medians. A client-driven chain of N stages sends 2N such frames per
token, so this is the floor of a chain's cost per hop that no stage code can remove.

    .venv/bin/python bench/hop.py [--rounds 5] [--frames 300] [--size 2400]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import trio

from dinet.p2p.host import build_host, open_host
from dinet.p2p.streams import FramedStream, Stream, open_framed
from dinet.wire.framing import encode_frame
from dinet.wire.keys import SigningKey

ECHO = "/dinet-bench/echo/1"
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


async def serve() -> None:
    """The echoing side: a libp2p host and a TCP listener; prints where they are."""
    host = build_host(SigningKey.generate())

    async def echo_frames(stream: Stream) -> None:
        framed = FramedStream(stream)
        while (payload := await framed.receive()) is not None:
            await framed.send_payload(payload)

    async def echo_bytes(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)

    host.set_handler(ECHO, echo_frames)
    async with host.running(LOOPBACK):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        print(json.dumps({"addr": host.full_addrs()[0], "port": port}), flush=True)
        await trio.serve_listeners(echo_bytes, listeners)


async def measure(addr: str, port: int, rounds: int, frames: int, size: int) -> dict[str, list[float]]:
    payload = b"\x01" * size
    frame = encode_frame(payload)
    results: dict[str, list[float]] = {"libp2p": [], "tcp": []}
    async with open_host(SigningKey.generate(), LOOPBACK) as host:
        framed = await open_framed(host, await host.dial(addr), ECHO, 10.0)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)

        async def over_libp2p() -> None:
            await framed.send_payload(payload)
            await framed.receive()

        async def over_tcp() -> None:
            await tcp.send_all(frame)
            got = 0
            while got < len(frame):
                got += len(await tcp.receive_some(65536))

        for _ in range(rounds):
            for name, once in (("libp2p", over_libp2p), ("tcp", over_tcp)):
                times = []
                for _ in range(frames):
                    started = time.perf_counter()
                    await once()
                    times.append(time.perf_counter() - started)
                results[name].append(statistics.median(times[10:]) * 1e3)
        await framed.close()
        await tcp.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", type=int, default=2400)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve)
        return
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        where = json.loads(server.stdout.readline())  # type: ignore[union-attr]
        results = trio.run(measure, where["addr"], where["port"], args.rounds, args.frames, args.size)
    finally:
        server.kill()
        server.wait()
    libp2p, tcp = statistics.median(results["libp2p"]), statistics.median(results["tcp"])
    print(
        f"\na {args.size}-byte frame and its echo between two processes on loopback, "
        f"{args.rounds} alternated rounds of {args.frames}, medians\n"
    )
    print(f"{'transport':34}{'round trip ms':>15}{'rounds':>40}")
    for name, label in (("libp2p", "py-libp2p stream (Noise + yamux)"), ("tcp", "plain trio TCP")):
        rounds = "  ".join(f"{r:.3f}" for r in results[name])
        print(f"{label:34}{statistics.median(results[name]):>15.3f}   {rounds}")
    print(f"\nlibp2p costs {libp2p - tcp:.3f} ms more per round trip ({libp2p / tcp:.1f}x)")
    print(
        json.dumps(
            {
                "bench": "hop",
                "size": args.size,
                "rounds": args.rounds,
                "frames": args.frames,
                "libp2p_rtt_ms": round(libp2p, 4),
                "tcp_rtt_ms": round(tcp, 4),
                "libp2p_extra_ms": round(libp2p - tcp, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
