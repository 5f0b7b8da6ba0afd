"""A user-space WAN link: holds every packet for a set delay, drops a seeded fraction.

This kernel has no netem, so the NAT lab's `wan` router sends every packet it forwards
through a TUN device that this process owns: it reads a packet, keeps it until its due
time (arrival + delay, never before the packet ahead of it, so order is kept), drops a
seeded-random fraction for loss, and writes it back into the router, which forwards it on.

Run inside the router's namespace (the lab does that), standard library only:

    python wan_link.py --dev NAME [--mtu 9000] [--seed 0]

It prints `ready` once the device exists. Commands, one a line on stdin, each answered
with one JSON line on stdout:

    set DELAY_MS LOSS   -> {"delay_ms": ..., "loss": ...}
    stats               -> {"packets_in": ..., "packets_out": ..., "dropped": ..., ...}

End of stdin ends the process (and with it the TUN device).

The device is opened with the kernel's offloads (IFF_VNET_HDR): TCP hands over segments
of up to 64 KB at once, which the kernel splits again after we write them back. Packets
are echoed unchanged, header included, so none of it needs parsing; it only makes the
link fast (one read and one write per 64 KB, not per 1500 bytes). While loss is above
zero the offloads are switched off, so loss applies to real packets, not to 64 KB bursts.
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import json
import os
import random
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6

READ_SIZE = 65536 + 64  # one GSO super-packet and its virtio header
BATCH = 256  # packets read per wake-up before the queue is looked at again


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
    fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS)
    return fd


class Link:
    def __init__(self, fd: int, seed: int) -> None:
        self.fd = fd
        self.rng = random.Random(seed)
        self.delay = 0.0  # seconds
        self.loss = 0.0
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.last_due = 0.0
        self.stats = {
            "packets_in": 0,
            "packets_out": 0,
            "bytes_in": 0,
            "dropped": 0,
            "write_errors": 0,
            "max_queue": 0,
        }

    def configure(self, delay_ms: float, loss: float) -> None:
        self.delay = delay_ms / 1000.0
        self.loss = loss
        fcntl.ioctl(self.fd, TUNSETOFFLOAD, 0 if loss > 0 else OFFLOADS)

    def read_some(self, now: float) -> None:
        for _ in range(BATCH):
            try:
                packet = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                return
            self.stats["packets_in"] += 1
            self.stats["bytes_in"] += len(packet)
            if self.loss and self.rng.random() < self.loss:
                self.stats["dropped"] += 1
                continue
            if not self.delay and not self.queue:
                self.write(packet)
                continue
            self.last_due = max(now + self.delay, self.last_due)
            self.queue.append((self.last_due, packet))

    def write_due(self, now: float) -> None:
        queue = self.queue
        self.stats["max_queue"] = max(self.stats["max_queue"], len(queue))
        while queue and queue[0][0] <= now:
            self.write(queue.popleft()[1])

    def write(self, packet: bytes) -> None:
        try:
            os.write(self.fd, packet)
            self.stats["packets_out"] += 1
        except OSError:  # the kernel refused it (e.g. the route vanished): a lost packet
            self.stats["write_errors"] += 1

    def timeout_ms(self, now: float) -> int:
        if not self.queue:
            return -1
        return max(0, int((self.queue[0][0] - now) * 1000.0 + 0.999))


def answer(line: str, link: Link) -> dict[str, object]:
    words = line.split()
    if words[:1] == ["set"] and len(words) == 3:
        link.configure(float(words[1]), float(words[2]))
        return {"delay_ms": link.delay * 1000.0, "loss": link.loss}
    if words == ["stats"]:
        times = os.times()
        return {**link.stats, "queued": len(link.queue), "cpu_s": times.user + times.system}
    return {"error": f"unknown command {line.strip()!r}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    link = Link(open_tun(args.dev), args.seed)
    control = sys.stdin.fileno()
    os.set_blocking(control, False)
    print("ready", flush=True)
    poller = select.poll()
    poller.register(link.fd, select.POLLIN)
    poller.register(control, select.POLLIN)
    pending = b""
    while True:
        events = poller.poll(link.timeout_ms(time.monotonic()))
        now = time.monotonic()
        for fd, _ in events:
            if fd == link.fd:
                link.read_some(now)
                continue
            chunk = os.read(control, 4096)
            if not chunk:
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                print(json.dumps(answer(line.decode(), link)), flush=True)
        link.write_due(time.monotonic())


if __name__ == "__main__":
    main()
