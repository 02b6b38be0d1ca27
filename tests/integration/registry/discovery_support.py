"""Building blocks of the discovery tests (meshd self-registration, controld's registry adapter).

The registry itself is the real ``controld registry`` subprocess of ``compat_support`` (the
``registry`` fixture of this package's conftest). Its blocking controls (start, stop, kill -9)
and py-consul's blocking calls run in worker threads here, so the sidecar or watcher under test
keeps running on the Trio loop meanwhile. Every wait is bounded.
"""

from __future__ import annotations

import inspect
import shutil
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import consul
import httpx
import trio
import yaml

from meshd.sidecar import Sidecar

from .compat_support import RegistryProcess

__all__ = [
    "TIMEOUT",
    "HealthApp",
    "RunningSidecar",
    "blocking",
    "eventually",
    "py_consul",
    "registry_down",
    "registry_up",
    "start_sidecar",
    "write_sidecar",
]

T = TypeVar("T")

#: Bound of every wait in these tests.
TIMEOUT = 20.0


async def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call (py-consul, process control) off the Trio loop."""
    return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


async def eventually(
    probe: Callable[[], Awaitable[T | bool | None] | T | bool | None],
    *,
    timeout: float = TIMEOUT,
    what: str = "condition",
) -> T:
    """Poll ``probe()`` (sync or async) until it returns something truthy (returned).

    Fails after ``timeout``, showing the last value.
    """
    last: object = None
    with trio.move_on_after(timeout):
        while True:
            last = probe()
            if inspect.isawaitable(last):
                last = await last
            if last:
                return last  # type: ignore[return-value]
            await trio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}")


async def registry_down(registry: RegistryProcess, *, hard: bool = False) -> None:
    """Stop the registry (SIGTERM, or ``kill -9`` when ``hard``); its port then refuses."""
    if hard:
        await blocking(registry.kill9)
    else:
        await blocking(registry.stop)


async def registry_up(registry: RegistryProcess, *, wipe: bool = False) -> None:
    """Start the registry again on the same port; ``wipe`` first deletes its data dir."""
    if wipe:
        shutil.rmtree(registry.data_dir, ignore_errors=True)
    await blocking(registry.start)


def py_consul(registry: RegistryProcess) -> Any:
    """A py-consul std client on ``registry`` with its management token, if it has one
    (close with ``client.http.session.close()``)."""
    return consul.Consul(host="127.0.0.1", port=registry.port, token=registry.token)


def service_token(registry: RegistryProcess, service: str) -> str:
    """A new registry token with ``service``'s identity (what `meshctl token registry` or
    `consul acl token create -service-identity` make), created with the management token."""
    assert registry.token is not None
    resp = httpx.put(
        f"{registry.url}/v1/acl/token",
        json={"Description": service, "ServiceIdentities": [{"ServiceName": service}]},
        headers={"X-Consul-Token": registry.token},
        timeout=TIMEOUT,
    )
    resp.raise_for_status()
    secret: str = resp.json()["SecretID"]
    return secret


# ----------------------------------------------------------------------------------------------
# The app behind the sidecar
# ----------------------------------------------------------------------------------------------


class HealthApp:
    """An HTTP/1.1 app on 127.0.0.1 whose every answer has status :attr:`status`.

    Status 0 means "hang": read the request, never answer (until :data:`TIMEOUT`).
    """

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.port = 0
        self.hits = 0

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; reports the bound port."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = int(listeners[0].socket.getsockname()[1])
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(trio.serve_listeners, self._handle, listeners))
            task_status.started(self.port)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            with trio.move_on_after(TIMEOUT):
                while b"\r\n\r\n" not in data:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    data += chunk
            self.hits += 1
            if self.status == 0:
                await trio.sleep(TIMEOUT)
                return
            reason = {200: "OK", 503: "Service Unavailable"}.get(self.status, "Whatever")
            body = b"ok\n" if self.status == 200 else b"down\n"
            head = (
                f"HTTP/1.1 {self.status} {reason}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            try:
                await stream.send_all(head.encode() + body)
            except trio.BrokenResourceError:
                return


# ----------------------------------------------------------------------------------------------
# In-process sidecars
# ----------------------------------------------------------------------------------------------


def write_sidecar(
    directory: Path, *, service: str, app_port: int, registry: dict[str, Any]
) -> Path:
    """Bootstrap + snapshot for a sidecar with one inbound listener and a ``registry:`` section."""
    directory.mkdir(parents=True, exist_ok=True)
    snapshot = {
        "version": 1,
        "listeners": [{"name": "inbound", "direction": "inbound", "address": "127.0.0.1:0"}],
    }
    (directory / "snapshot.yaml").write_text(yaml.safe_dump(snapshot))
    bootstrap = {
        "service": service,
        "app": f"127.0.0.1:{app_port}",
        "admin": "127.0.0.1:0",
        "snapshot": {"file": "snapshot.yaml"},
        "drain_timeout_s": 2,
        "drain_delay_s": 0,
        "registry": registry,
    }
    path = directory / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    return path


class RunningSidecar:
    """An in-process :class:`Sidecar` and a way to drain it and wait for its end."""

    def __init__(self, sidecar: Sidecar, done: trio.Event) -> None:
        self.sidecar = sidecar
        self.done = done

    @property
    def inbound_port(self) -> int:
        """Bound port of the ``inbound`` listener."""
        return self.sidecar.listeners.slots["inbound"].port

    async def drain(self, timeout: float = TIMEOUT) -> None:
        """Start draining (as SIGTERM would) and wait until the sidecar has stopped."""
        self.sidecar.start_drain()
        with trio.fail_after(timeout):
            await self.done.wait()


async def start_sidecar(nursery: trio.Nursery, bootstrap: Path) -> RunningSidecar:
    """Run a sidecar in ``nursery``; it stops when drained or when the nursery is cancelled."""
    done = trio.Event()

    async def run(*, task_status: trio.TaskStatus[Sidecar] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await Sidecar(bootstrap).run(task_status=task_status)
        finally:
            done.set()

    sidecar: Sidecar = await nursery.start(run)
    return RunningSidecar(sidecar, done)
