"""A drain asked through controld: the ``x-meshd-drain: 1`` header of a poll answer calls the
ControlSource's ``on_drain`` (the sidecar wires it to its drain, see the real-controld test
tests/integration/controlplane/test_dashboard.py, where the sidecar process exits)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from fake_controld import FakeControld
from starlette.applications import Starlette

from meshcore.api.sidecar import DRAIN_HEADER
from meshcore.model.bootstrap import ControlSource as ControlSourceConfig
from meshcore.model.proxy import ProxyDescriptor
from meshcore.model.snapshot import Snapshot
from meshd.control.source import ControlSource

pytestmark = pytest.mark.timeout(30)


class DrainingControld(FakeControld):
    """The fake controld, whose next poll answer (once :attr:`drain` is set) says "drain"."""

    drain = False

    def app(self) -> Starlette:
        inner = super().app()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            is_poll = scope["type"] == "http" and scope["path"].startswith("/v1/snapshots/")

            async def send_with_header(message: Any) -> None:
                if is_poll and message["type"] == "http.response.start" and self.drain:
                    self.drain = False
                    headers = [*message.get("headers", []), (DRAIN_HEADER.encode(), b"1")]
                    message = {**message, "headers": headers}
                await send(message)

            await inner(scope, receive, send_with_header)

        return app  # type: ignore[return-value]


async def test_drain_header_calls_on_drain_once(nursery: trio.Nursery) -> None:
    fake = DrainingControld()
    await fake.start(nursery)
    fake.publish({"mtls": "disabled"})
    drains: list[float] = []
    applied: list[Snapshot] = []
    config = ControlSourceConfig(url=f"http://127.0.0.1:{fake.port}", wait_s=1, timeout_s=2)
    source = ControlSource(
        config,
        ProxyDescriptor(proxy_id="p1", service="web"),
        applied.append,
        on_drain=lambda: drains.append(trio.current_time()),
    )
    await nursery.start(source.run)
    with trio.fail_after(10):
        while not applied:
            await trio.sleep(0.02)
    assert drains == []
    fake.drain = True
    with trio.fail_after(10):
        while not drains:
            await trio.sleep(0.02)
    polls = len(fake.polls)
    with trio.fail_after(10):
        while len(fake.polls) < polls + 2:  # polling goes on, and says nothing more
            await trio.sleep(0.02)
    assert len(drains) == 1
