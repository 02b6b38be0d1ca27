"""Network namespaces as hosts for end-to-end tests.

Every namespace, veth link and process made here is removed again, also when a test fails.
Addresses live only inside the namespaces the test creates.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


def netns_available() -> str | None:
    """Why namespaces can't be used here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Host:
    """One namespace with one address on the shared link."""

    name: str
    address: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(
        self, argv: Sequence[str], *, log: Path, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside this host; stopped when the topology is torn down."""
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.name, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.procs.append(proc)
        return proc

    def run(
        self, argv: Sequence[str], *, timeout: float = 20
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` inside this host to completion."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            timeout=timeout,
            check=False,
        )


@contextmanager
def two_hosts(tag: str) -> Iterator[tuple[Host, Host]]:
    """Two namespaces joined by a veth pair: 10.231.0.1/24 and 10.231.0.2/24."""
    suffix = f"{tag}{os.getpid() % 100000}"
    a = Host(f"meshA{suffix}", "10.231.0.1")
    b = Host(f"meshB{suffix}", "10.231.0.2")
    veth_a, veth_b = f"va{suffix}"[:15], f"vb{suffix}"[:15]
    made: list[str] = []
    try:
        for host in (a, b):
            _ip("netns", "add", host.name)
            made.append(host.name)
            _ip("-n", host.name, "link", "set", "lo", "up")
        _ip(
            "link",
            "add",
            veth_a,
            "netns",
            a.name,
            "type",
            "veth",
            "peer",
            "name",
            veth_b,
            "netns",
            b.name,
        )
        for host, dev in ((a, veth_a), (b, veth_b)):
            _ip("-n", host.name, "addr", "add", f"{host.address}/24", "dev", dev)
            _ip("-n", host.name, "link", "set", dev, "up")
        yield a, b
    finally:
        for host in (a, b):
            for proc in host.procs:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(timeout=10)
        for name in made:
            # Deleting a namespace removes the veth end inside it (and so the pair).
            subprocess.run(
                ["ip", "netns", "del", name], capture_output=True, timeout=10, check=False
            )
