"""Micro-benchmark: what waiting for a peer's answer costs a Trio proxy, by way of waiting.

The L7 proxy waits twice per request: for the upstream's answer and for the client's next
request. This measures, in one process, the CPU of round trips between ``--pairs`` socket
pairs: one side writes a small message and waits for the echo, the other (a Trio task parked
in ``wait_readable``, the same in every mode) echoes it. The modes differ only in how the
first side waits:

* ``park``: a task per socket parked in ``trio.lowlevel.wait_readable`` (what
  ``SocketStream.receive_later`` does: a one-shot ``epoll_ctl`` to re-arm, a wake-up through
  Trio's I/O manager and scheduler);
* ``dispatch``: a task per socket parked in ``wait_task_rescheduled``, woken by one system
  task that waits on an epoll set of its own in which every socket is registered once
  (edge-triggered), so no ``epoll_ctl`` per wait;
* ``reactor``: no task per socket: one task serves every socket from a persistent epoll set
  (level-triggered) and writes the next message right in its loop, as
  :mod:`meshd.net.reactor` moves L4 bytes.

It also prints the fixed costs a "yield, then try a read without parking" scheme weighs: a
``cancel_shielded_checkpoint`` among ``--pairs`` tasks, a ``recv`` that says EAGAIN, and the
``poll(0)`` of a pooled connection's staleness check.

    .venv/bin/python bench/wait_micro.py [--pairs 32] [--rounds 3000] [--reps 2]

Not a test: the µs depend on the machine; compare the modes with each other.
"""

from __future__ import annotations

import argparse
import select
import socket
import time
from collections.abc import Callable

import trio

MESSAGE = b"x" * 64


def _pairs(n: int) -> list[tuple[socket.socket, socket.socket]]:
    pairs = [socket.socketpair() for _ in range(n)]
    for a, b in pairs:
        a.setblocking(False)
        b.setblocking(False)
    return pairs


async def _echo(sock: socket.socket) -> None:
    while True:
        await trio.lowlevel.wait_readable(sock)
        data = sock.recv(1024)
        if not data:
            return
        sock.send(data)


class _Dispatcher:
    """Edge-triggered registrations made once; one system task wakes the waiting tasks."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.waiting: dict[int, trio.lowlevel.Task] = {}
        self.ready: set[int] = set()
        self.known: set[int] = set()

    async def run(self) -> None:
        fileno = self.epoll.fileno()
        poll = self.epoll.poll
        waiting = self.waiting
        reschedule = trio.lowlevel.reschedule
        while True:
            await trio.lowlevel.wait_readable(fileno)
            for fd, _ in poll(0, 256):
                task = waiting.pop(fd, None)
                if task is None:
                    self.ready.add(fd)  # came before anyone waited: the next wait returns
                else:
                    reschedule(task)

    async def wait_readable(self, fd: int) -> None:
        if fd not in self.known:
            self.epoll.register(fd, select.EPOLLIN | select.EPOLLET)
            self.known.add(fd)
        if fd in self.ready:
            self.ready.discard(fd)
            return
        self.waiting[fd] = trio.lowlevel.current_task()

        def abort(_: Callable[[], object]) -> trio.lowlevel.Abort:
            self.waiting.pop(fd, None)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


async def _client(sock: socket.socket, rounds: int, dispatcher: _Dispatcher | None) -> None:
    fd = sock.fileno()
    for _ in range(rounds):
        sock.send(MESSAGE)
        while True:
            if dispatcher is None:
                await trio.lowlevel.wait_readable(sock)
            else:
                await dispatcher.wait_readable(fd)
            try:
                sock.recv(1024)
                break
            except BlockingIOError:
                continue


async def _reactor(socks: list[socket.socket], rounds: int) -> None:
    epoll = select.epoll()
    left = {}
    by_fd = {}
    for sock in socks:
        epoll.register(sock.fileno(), select.EPOLLIN)
        left[sock.fileno()] = rounds
        by_fd[sock.fileno()] = sock
        sock.send(MESSAGE)
    live = len(socks)
    while live:
        await trio.lowlevel.wait_readable(epoll.fileno())
        for fd, _ in epoll.poll(0, 256):
            sock = by_fd[fd]
            sock.recv(1024)
            left[fd] -= 1
            if left[fd]:
                sock.send(MESSAGE)
            else:
                epoll.unregister(fd)
                live -= 1
    epoll.close()


async def round_trips(mode: str, pairs: int, rounds: int) -> float:
    """CPU µs per round trip (both sides) of ``pairs`` x ``rounds`` round trips."""
    socks = _pairs(pairs)
    dispatcher = _Dispatcher() if mode == "dispatch" else None
    try:
        async with trio.open_nursery() as outer:
            if dispatcher is not None:
                outer.start_soon(dispatcher.run)
            for _, b in socks:
                outer.start_soon(_echo, b)
            start = time.process_time()
            if mode == "reactor":
                await _reactor([a for a, _ in socks], rounds)
            else:
                async with trio.open_nursery() as clients:
                    for a, _ in socks:
                        clients.start_soon(_client, a, rounds, dispatcher)
            spent = time.process_time() - start
            outer.cancel_scope.cancel()
    finally:
        for a, b in socks:
            a.close()
            b.close()
        if dispatcher is not None:
            dispatcher.epoll.close()
    return spent / (pairs * rounds) * 1e6


async def fixed_costs(pairs: int, n: int = 50_000) -> dict[str, float]:
    """µs of a yield among ``pairs`` tasks, of a recv saying EAGAIN, of a poll(0)."""

    async def hop(count: int) -> None:
        for _ in range(count):
            await trio.lowlevel.cancel_shielded_checkpoint()

    start = time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(pairs):
            nursery.start_soon(hop, n // pairs)
    costs = {"yield": (time.process_time() - start) / (n // pairs * pairs) * 1e6}
    a, b = socket.socketpair()
    a.setblocking(False)
    start = time.process_time()
    for _ in range(n):
        try:  # noqa: SIM105 (contextlib.suppress would be timed too)
            a.recv(1024)
        except BlockingIOError:
            pass
    costs["recv_eagain"] = (time.process_time() - start) / n * 1e6
    probe = select.poll()
    probe.register(a, select.POLLIN)
    start = time.process_time()
    for _ in range(n):
        probe.poll(0)
    costs["poll0"] = (time.process_time() - start) / n * 1e6
    a.close()
    b.close()
    return costs


def main() -> None:
    """Parse the arguments, measure every mode ``--reps`` times, print µs per round trip."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    for rep in range(args.reps):
        for mode in ("park", "dispatch", "reactor"):
            us = trio.run(round_trips, mode, args.pairs, args.rounds)
            print(f"rep {rep} {mode}: {us:.2f} us per round trip", flush=True)
    costs = trio.run(fixed_costs, args.pairs)
    print(" ".join(f"{name}={us:.2f}us" for name, us in costs.items()))


if __name__ == "__main__":
    main()
