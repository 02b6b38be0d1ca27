"""WebSocket through the outbound and inbound sidecars: the HTTP upgrade, then a byte tunnel."""

from __future__ import annotations

from typing import Any

import trio
from helpers import TIMEOUT, Chain, RawClient, TestApp, request
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)


class WsClient:
    """A wsproto client over a :class:`RawClient` connection."""

    def __init__(self, client: RawClient) -> None:
        self.client = client
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Any] = []

    async def send(self, event: Any) -> None:
        await self.client.send(self.ws.send(event))

    async def next_event(self) -> Any:
        with trio.fail_after(TIMEOUT):
            while not self.pending:
                data = await self.client.stream.receive_some(65536)
                self.ws.receive_data(data or None)
                self.pending.extend(self.ws.events())
                if not data and not self.pending:
                    raise EOFError("connection closed")
        return self.pending.pop(0)

    async def message(self) -> str | bytes:
        """The next whole message (wsproto may deliver it in fragments)."""
        parts: list[Any] = []
        while True:
            event = await self.next_event()
            assert isinstance(event, TextMessage | BytesMessage), event
            parts.append(event.data)
            if event.message_finished:
                if isinstance(event, TextMessage):
                    return "".join(parts)
                return b"".join(parts)


async def test_websocket_echo_through_tunnel(chain: Chain, app: TestApp) -> None:
    async with RawClient.connect(chain.port) as client:
        ws = WsClient(client)
        await ws.send(Request(host="api.test", target="/ws"))
        accepted = await ws.next_event()
        assert isinstance(accepted, AcceptConnection), accepted

        for i in range(5):
            await ws.send(TextMessage(data=f"hello {i} " + "x" * (i * 1000)))
            assert await ws.message() == f"hello {i} " + "x" * (i * 1000)
        big = bytes(range(256)) * 1024  # 256 KiB, many TCP segments both ways
        await ws.send(BytesMessage(data=big))
        assert await ws.message() == big

        # Several in flight at once, answered in order.
        for i in range(10):
            await ws.send(TextMessage(data=f"burst {i}"))
        for i in range(10):
            assert await ws.message() == f"burst {i}"

        await ws.send(Ping(payload=b"are you there"))
        pong = await ws.next_event()
        assert isinstance(pong, Pong) and pong.payload == b"are you there"

        await ws.send(CloseConnection(code=1000, reason="done"))
        closing = await ws.next_event()
        assert isinstance(closing, CloseConnection), closing
        assert closing.code == 1000
        # After the close handshake the server ends the TCP connection, through both tunnels.
        _, how = await client.read_until_closed()
        assert how == "eof"
    assert app.websockets == 1


async def test_websocket_server_close_reaches_client(chain: Chain, app: TestApp) -> None:
    """The app ends the connection first (here: the client goes away on the other side)."""
    async with RawClient.connect(chain.port) as client:
        ws = WsClient(client)
        await ws.send(Request(host="api.test", target="/ws"))
        assert isinstance(await ws.next_event(), AcceptConnection)
        await ws.send(TextMessage(data="one"))
        assert await ws.message() == "one"
    # The tunnels of both sidecars end when one side does: nothing stays open.
    with trio.fail_after(TIMEOUT):
        while chain.outbound.listeners.connection_count or chain.inbound.listeners.connection_count:
            await trio.sleep(0.02)


async def test_websocket_rejected_upgrade_is_plain_http(chain: Chain, app: TestApp) -> None:
    """An upgrade the app refuses is an ordinary response, relayed as such."""
    async with RawClient.connect(chain.port) as client:
        ws = WsClient(client)
        await ws.send(Request(host="api.test", target="/not-ws"))
        event = await ws.next_event()
        assert isinstance(event, RejectConnection), event
        assert event.status_code == 403
    assert app.websockets == 0


async def test_upgrade_without_connection_header_is_not_an_upgrade(
    chain: Chain, app: TestApp
) -> None:
    async with RawClient.connect(chain.port) as client:
        await client.send(request("GET", "/echo/up", headers=[("Upgrade", "websocket")]))
        resp = await client.read_response()
        assert resp.status == 200
        assert "upgrade" not in {n for n, _ in resp.json()["headers"]}
        await client.send(request("GET", "/echo/after"))
        assert (await client.read_response()).json()["path"] == "/echo/after"
