"""Micro-benchmark: meshd.net.pump over loopback, the reactor against receive_some/send_all tasks.

A child process (plain blocking sockets, one thread per direction) is the client and the
server; this process runs only the pump, so its wall and CPU time are the pump's.

    PYTHONPATH=. python bench/tcp_pump_micro.py [--mib 1024] [--reps 2] [--bidir]

``reactor`` is the path plain sockets take (:mod:`meshd.net.reactor`: epoll, bulk reads with
splice(2)); ``copy`` is the task-per-direction path that TLS and other streams take.

Not a test: numbers depend on the machine, only the ratio between the two paths means much.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time

import trio

from meshd.net.pump import SPLICE_AVAILABLE, PumpResult, pump
from meshd.net.stream import SocketStream

CHUNK = 1 << 20


def _send(sock: socket.socket, total: int) -> None:
    block = b"\xa5" * CHUNK
    left = total
    while left:
        n = min(left, CHUNK)
        sock.sendall(block[:n] if n < CHUNK else block)
        left -= n
    sock.shutdown(socket.SHUT_WR)


def _drain(sock: socket.socket, out: list[int]) -> None:
    buf = bytearray(CHUNK)
    got = 0
    while n := sock.recv_into(buf):
        got += n
    out.append(got)


def peer(port_down: int, port_up: int, total: int, bidir: bool) -> None:
    """The child: client on ``port_down``, server on ``port_up``; prints bytes received."""
    client = socket.create_connection(("127.0.0.1", port_down))
    server = socket.create_connection(("127.0.0.1", port_up))
    received: list[int] = []
    threads = [
        threading.Thread(target=_send, args=(client, total)),
        threading.Thread(target=_drain, args=(server, received)),
        threading.Thread(target=_drain, args=(client, received)),
    ]
    if bidir:
        threads.append(threading.Thread(target=_send, args=(server, total)))
    else:
        server.shutdown(socket.SHUT_WR)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    server.close()
    print(sum(received))


def run_once(total: int, use_reactor: bool, bidir: bool) -> tuple[PumpResult, float, float]:
    """One pump of ``total`` bytes (each way with ``bidir``): result, wall s, CPU s."""
    with (
        socket.create_server(("127.0.0.1", 0)) as listen_down,
        socket.create_server(("127.0.0.1", 0)) as listen_up,
    ):
        child = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--peer",
                str(listen_down.getsockname()[1]),
                str(listen_up.getsockname()[1]),
                str(total),
                *(["--bidir"] if bidir else []),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        down_sock, _ = listen_down.accept()
        up_sock, _ = listen_up.accept()

    async def main() -> tuple[PumpResult, float, float]:
        down, up = SocketStream(down_sock), SocketStream(up_sock)
        try:
            wall, cpu = time.perf_counter(), time.process_time()
            result = await pump(down, up, idle_timeout_s=60, use_reactor=use_reactor)
            return result, time.perf_counter() - wall, time.process_time() - cpu
        finally:
            await down.aclose()
            await up.aclose()

    try:
        outcome = trio.run(main)
    finally:
        out, _ = child.communicate(timeout=120)
    expected = total * (2 if bidir else 1)
    if outcome[0].reason != "eof" or int(out) != expected:
        raise SystemExit(f"bad run: {outcome[0]}, peer received {out.strip()} of {expected}")
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="MiB to move (each way)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--bidir", action="store_true", help="send both ways at once")
    parser.add_argument("--peer", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        port_down, port_up, total_bytes = args.peer
        peer(port_down, port_up, total_bytes, bidir=args.bidir)
        return
    total = min(args.mib, 4096) << 20  # bounded: at most 4 GiB per run
    modes = [("reactor", True), ("copy", False)] if SPLICE_AVAILABLE else [("copy", False)]
    direction = "both ways" if args.bidir else "one way"
    print(f"{args.mib} MiB {direction}, {args.reps} reps")
    for name, use_reactor in modes:
        for rep in range(min(args.reps, 10)):
            result, wall, cpu = run_once(total, use_reactor, args.bidir)
            moved = result.downstream_to_upstream + result.upstream_to_downstream
            print(
                f"{name:>6} rep {rep}: {moved / wall / 1e6:8.0f} MB/s  "
                f"wall {wall:5.2f} s  pump CPU {cpu:5.2f} s "
                f"({moved / max(cpu, 1e-9) / 1e6:6.0f} MB per CPU-s)"
            )


if __name__ == "__main__":
    main()
