"""The WAN testbed's delay line: move IP packets between two TUN devices after a one-way delay.

``python bench/_relay.py --ns-a /run/netns/C --ns-b /run/netns/S --dev NAME --delay-ms 25 ...``

It enters each network namespace (``setns`` through ctypes: Python 3.11 has no ``os.setns``),
opens a TUN device there (``/dev/net/tun``, ``TUNSETIFF`` with ``IFF_TUN | IFF_NO_PI``), goes back
to its own namespace and prints one JSON line (``{"ready": ...}``). From then on every packet read
from one device is written to the other after the one-way delay, through a heap ordered by due
time. Options make the relay the path's bottleneck router: ``--rate`` (bytes/s) serialises the
packets of each direction at that rate behind a drop-tail queue of ``--queue-bytes`` (a packet
that would not fit is dropped), and ``--loss`` drops that fraction of packets at random
(``--seed`` makes the sequence repeatable). Packets are opaque: the relay reads only their length.

Why a hand-written relay and not the kernel's queueing disciplines: this kernel has no netem
(``tc qdisc ... netem`` answers "Specified qdisc kind is unknown"), and a tbf or htb on the sending
host's own device never builds a queue (TCP small queues hold a flow to a packet or two in the
qdisc), so it cannot stand for a router between two hosts. A userspace relay between two TUN
devices is a real router: the sender's packets leave its stack, wait in a queue it cannot see,
and are dropped when that queue is full. MTU 64000 on fast paths keeps the packet rate low
enough for Python (a relay like this carried 326 MB/s at 50 ms on this machine); 9000 on slow
bottlenecks, where a packet's serialisation time must stay small.

Bounded: the relay exits when its standard input reaches end of file (its parent died or closed
it), on SIGTERM/SIGINT, and after ``--max-seconds`` at the latest. Its TUN devices vanish with it
(they are not persistent). ``SIGUSR1`` makes it write its counters as JSON to ``--stats``
(atomically, by rename); it writes them at exit too. Standard library only.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import heapq
import json
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
READ_SIZE = 65536 + 4096  # larger than any MTU the testbed uses (at most 65535)
BATCH = 256  # packets read from one device before the heap is looked at again


def setns(path: str) -> None:
    """Move this thread into the network namespace bound at *path* (e.g. /run/netns/NAME)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def open_tun(name: str) -> int:
    """Create TUN device *name* in the current network namespace; its non-blocking fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class Link:
    """One direction of the path: delay, optional rate behind a drop-tail queue, random loss."""

    def __init__(
        self,
        name: str,
        out_fd: int,
        delay: float,
        rate: float,
        queue_bytes: int,
        loss: float,
        rng: random.Random,
    ) -> None:
        self.name = name
        self.out_fd = out_fd
        self.delay = delay
        self.rate = rate  # bytes/s; 0: no bottleneck
        self.queue_bytes = queue_bytes
        self.loss = loss
        self.rng = rng
        self.busy_until = 0.0  # when the bottleneck finishes serialising what it holds
        self.packets = 0
        self.bytes = 0
        self.dropped_queue = 0
        self.dropped_loss = 0
        self.write_errors = 0
        self.max_backlog = 0  # bytes waiting in the bottleneck's queue, at most

    def due(self, now: float, size: int) -> float | None:
        """When a packet of *size* bytes arriving *now* leaves the far end; None: dropped.

        The bottleneck is the fluid model of a FIFO link: what it still holds is
        ``(busy_until - now) * rate`` bytes; a packet joins if that plus its size fits in the
        queue, and leaves once everything ahead of it and itself have been serialised.
        """
        if self.loss and self.rng.random() < self.loss:
            self.dropped_loss += 1
            return None
        if self.rate:
            backlog = max(0.0, self.busy_until - now) * self.rate
            if backlog + size > self.queue_bytes:
                self.dropped_queue += 1
                return None
            self.max_backlog = max(self.max_backlog, int(backlog + size))
            self.busy_until = max(now, self.busy_until) + size / self.rate
            return self.busy_until + self.delay
        return now + self.delay

    def stats(self) -> dict[str, int]:
        """Counters of this direction."""
        return {
            "packets": self.packets,
            "bytes": self.bytes,
            "dropped_queue": self.dropped_queue,
            "dropped_loss": self.dropped_loss,
            "write_errors": self.write_errors,
            "max_backlog_bytes": self.max_backlog,
        }


def main(argv: list[str] | None = None) -> int:
    """Open the devices, print the ready line, relay until told to stop."""
    ap = argparse.ArgumentParser(prog="bench/_relay.py", description=__doc__.split("\n")[0])
    ap.add_argument("--ns-a", required=True, help="client namespace path (/run/netns/NAME)")
    ap.add_argument("--ns-b", required=True, help="server namespace path")
    ap.add_argument("--dev", required=True, help="TUN device name (the same in both)")
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay, each way")
    ap.add_argument("--rate", type=float, default=0.0, help="bottleneck bytes/s (0: none)")
    ap.add_argument("--queue-bytes", type=int, default=0, help="bottleneck queue (drop-tail)")
    ap.add_argument("--loss", type=float, default=0.0, help="random loss, fraction of packets")
    ap.add_argument("--seed", type=int, default=1, help="seed of the loss sequence")
    ap.add_argument("--stats", help="where SIGUSR1 and exit write the counters (JSON)")
    ap.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this long")
    args = ap.parse_args(argv)
    if args.rate and args.queue_bytes <= 0:
        ap.error("--rate needs --queue-bytes")

    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    setns(args.ns_a)
    fd_a = open_tun(args.dev)
    setns(args.ns_b)
    fd_b = open_tun(args.dev)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(home, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns back home")
    os.close(home)

    delay = args.delay_ms / 1000.0
    rng = random.Random(args.seed)
    # a→b is client→server (requests, ACKs), b→a server→client (the data of a download)
    links = {
        fd_a: Link("client_to_server", fd_b, delay, args.rate, args.queue_bytes, args.loss, rng),
        fd_b: Link("server_to_client", fd_a, delay, args.rate, args.queue_bytes, args.loss, rng),
    }
    state = {"stop": False, "dump": False}

    def on_stop(_signum: int, _frame: object) -> None:
        state["stop"] = True

    def on_dump(_signum: int, _frame: object) -> None:
        state["dump"] = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGUSR1, on_dump)

    t_start = time.monotonic()
    deadline = t_start + args.max_seconds
    heap: list[tuple[float, int, int, bytes]] = []
    seq = 0
    held_bytes = 0
    max_held = 0
    dumps = 0

    def write_stats() -> None:
        nonlocal dumps
        if not args.stats:
            return
        dumps += 1
        data = {
            "dumps": dumps,
            "uptime_s": time.monotonic() - t_start,
            "held_packets": len(heap),
            "held_bytes": held_bytes,
            "max_held_bytes": max_held,
            **{link.name: link.stats() for link in links.values()},
        }
        tmp = f"{args.stats}.tmp"
        with open(tmp, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, args.stats)

    ep = select.epoll()
    ep.register(fd_a, select.EPOLLIN)
    ep.register(fd_b, select.EPOLLIN)
    stdin = sys.stdin.fileno()
    ep.register(stdin, select.EPOLLIN | select.EPOLLHUP)
    print(json.dumps({"ready": True, "pid": os.getpid(), "dev": args.dev}), flush=True)

    read = os.read
    write = os.write
    push = heapq.heappush
    pop = heapq.heappop
    now_fn = time.monotonic
    try:
        while not state["stop"]:
            now = now_fn()
            if now >= deadline:
                break
            while heap and heap[0][0] <= now:
                _, _, out_fd, pkt = pop(heap)
                held_bytes -= len(pkt)
                try:
                    write(out_fd, pkt)
                except OSError:
                    links[fd_a if out_fd == fd_b else fd_b].write_errors += 1
            if state["dump"]:
                state["dump"] = False
                write_stats()
            wait = min(heap[0][0] - now if heap else 0.5, deadline - now)
            for fd, _ev in ep.poll(max(0.0, wait)):
                if fd == stdin:
                    if not read(stdin, 4096):
                        state["stop"] = True  # the parent closed the pipe or died
                    continue
                link = links[fd]
                t = now_fn()
                for _ in range(BATCH):
                    try:
                        pkt = read(fd, READ_SIZE)
                    except BlockingIOError:
                        break
                    size = len(pkt)
                    link.packets += 1
                    link.bytes += size
                    due = link.due(t, size)
                    if due is None:
                        continue
                    seq += 1
                    push(heap, (due, seq, link.out_fd, pkt))
                    held_bytes += size
                if held_bytes > max_held:
                    max_held = held_bytes
    finally:
        write_stats()
        os.close(fd_a)
        os.close(fd_b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
