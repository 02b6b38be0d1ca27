from __future__ import annotations

import contextlib
import datetime as dt
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
from tls_certs import Leaf, MiniCA, make_ca, spiffe

from meshd.net.listen import bind_tcp
from meshd.net.stream import SocketStream, open_tcp
from meshd.net.tls import TlsHandshakeError, TlsStream, tls_accept, tls_connect
from meshd.net.tlsconfig import (
    PeerIdentityError,
    check_peer,
    client_context,
    peer_spiffe_id,
    server_context,
    sniff_tls,
    sniffed_tls,
)

Handler = Callable[[TlsStream], Awaitable[None]]
MIB = 1 << 20


@dataclass
class Pki:
    ca: MiniCA
    server: Leaf
    client: Leaf

    def server_ctx(
        self, leaf: Leaf | None = None, *, require_client_cert: bool = True
    ) -> ssl.SSLContext:
        leaf = leaf or self.server
        return server_context(
            leaf.cert_pem, leaf.key_pem, self.ca.root_pem, require_client_cert=require_client_cert
        )

    def client_ctx(self, leaf: Leaf | None = None) -> ssl.SSLContext:
        leaf = leaf or self.client
        return client_context(leaf.cert_pem, leaf.key_pem, [self.ca.root_pem])


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = make_ca()
    return Pki(ca, ca.service("server"), ca.service("client"))


@dataclass
class Server:
    port: int
    errors: list[BaseException] = field(default_factory=list)
    peers: list[str | None] = field(default_factory=list)
    reused: list[bool] = field(default_factory=list)


@asynccontextmanager
async def tls_server(ctx: ssl.SSLContext, handler: Handler) -> AsyncIterator[Server]:
    """Accepts on 127.0.0.1, runs the server handshake and ``handler`` per connection."""
    listener = bind_tcp("127.0.0.1", 0)
    server = Server(listener.getsockname()[1])

    async def handle(conn: socket.socket) -> None:
        try:
            with trio.fail_after(10):
                stream = await tls_accept(conn, ctx)
        except TlsHandshakeError as exc:
            server.errors.append(exc)
            return
        der = stream.peer_certificate_der()
        server.peers.append(peer_spiffe_id(der) if der else None)
        server.reused.append(stream.session_reused)
        try:
            await handler(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            server.errors.append(exc)
        finally:
            await stream.aclose()

    async def serve(nursery: trio.Nursery) -> None:
        while True:
            await trio.lowlevel.wait_readable(listener)
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                continue
            nursery.start_soon(handle, conn)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, nursery)
            yield server
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.notify_closing(listener)
        listener.close()


async def echo(stream: TlsStream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)
    await stream.send_eof()


async def receive_all(stream: TlsStream) -> bytes:
    out = bytearray()
    while data := await stream.receive_some():
        out += data
    return bytes(out)


async def exchange(port: int, ctx: ssl.SSLContext) -> bytes:
    """Connect, send a little, read the answer: where a refused client learns of it."""
    client = await tls_connect("127.0.0.1", port, ctx)
    try:
        await client.send_all(b"hello")
        return await client.receive_some()
    finally:
        await client.aclose()


async def test_echo_small_and_large_both_ways(pki: Pki) -> None:
    async with tls_server(pki.server_ctx(), echo) as server:
        client = await tls_connect("127.0.0.1", server.port, pki.client_ctx())
        try:
            assert check_peer(client, spiffe("server")) == spiffe("server")
            await client.send_all(b"")
            await client.send_all(b"ping")
            assert await client.receive_some() == b"ping"
            payload = bytes(range(256)) * (4 * 1024)  # 1 MiB
            got = bytearray()

            async def read_echo() -> None:
                while len(got) < len(payload):
                    got.extend(await client.receive_some())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_echo)
                await client.send_all(payload)
            assert bytes(got) == payload
            # Half-close: the server sees end of stream, answers with its own.
            await client.send_eof()
            assert await client.receive_some() == b""
        finally:
            await client.aclose()
    assert server.peers == [spiffe("client")]
    assert server.errors == []


async def test_server_sends_first_and_large(pki: Pki) -> None:
    payload = b"\x5a" * MIB

    async def push(stream: TlsStream) -> None:
        await stream.send_all(payload)
        await stream.send_eof()

    async with tls_server(pki.server_ctx(), push) as server:
        client = await tls_connect("127.0.0.1", server.port, pki.client_ctx())
        try:
            assert await receive_all(client) == payload
        finally:
            await client.aclose()


async def test_client_without_certificate_is_refused(pki: Pki) -> None:
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname = False
    bare.load_verify_locations(cadata=pki.ca.root_pem.decode())
    async with tls_server(pki.server_ctx(), echo) as server:
        # TLS 1.3: the client's handshake may finish before the server checks it.
        with pytest.raises((TlsHandshakeError, trio.BrokenResourceError)):
            await exchange(server.port, bare)
    assert len(server.errors) == 1
    assert isinstance(server.errors[0], TlsHandshakeError)
    assert "certificate" in str(server.errors[0])


async def test_optional_client_cert_then_check_peer_fails(pki: Pki) -> None:
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname = False
    bare.load_verify_locations(cadata=pki.ca.root_pem.decode())
    checked: list[PeerIdentityError] = []

    async def handler(stream: TlsStream) -> None:
        with pytest.raises(PeerIdentityError) as info:
            check_peer(stream, spiffe("client"))
        checked.append(info.value)

    async with tls_server(pki.server_ctx(require_client_cert=False), handler) as server:
        client = await tls_connect("127.0.0.1", server.port, bare)
        try:
            assert await receive_all(client) == b""
        finally:
            await client.aclose()
    assert server.peers == [None]
    assert checked[0].actual is None


async def test_wrong_server_identity_fails_check_peer(pki: Pki) -> None:
    async with tls_server(pki.server_ctx(pki.ca.service("impostor")), echo) as server:
        client = await tls_connect("127.0.0.1", server.port, pki.client_ctx())
        try:
            with pytest.raises(PeerIdentityError) as info:
                check_peer(client, spiffe("server"))
        finally:
            await client.aclose()
    assert info.value.actual == spiffe("impostor")
    assert info.value.expected == spiffe("server")


async def test_foreign_ca_server_is_refused(pki: Pki) -> None:
    foreign = make_ca("foreign root").service("server")
    ctx = server_context(foreign.cert_pem, foreign.key_pem, pki.ca.root_pem)
    async with tls_server(ctx, echo) as server:
        with pytest.raises(TlsHandshakeError, match="certificate verify failed"):
            await tls_connect("127.0.0.1", server.port, pki.client_ctx())


async def test_foreign_ca_client_is_refused(pki: Pki) -> None:
    foreign = make_ca("foreign root").service("client")
    ctx = client_context(foreign.cert_pem, foreign.key_pem, pki.ca.root_pem)
    async with tls_server(pki.server_ctx(), echo) as server:
        with pytest.raises((TlsHandshakeError, trio.BrokenResourceError)):
            await exchange(server.port, ctx)
    assert len(server.errors) == 1
    assert "certificate verify failed" in str(server.errors[0])


def _days(n: int) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=n)


@pytest.mark.parametrize(
    ("window", "reason"),
    [
        ((-10, -1), "expired"),
        ((1, 10), "not yet valid"),
    ],
)
async def test_server_cert_outside_validity_is_refused(
    pki: Pki, window: tuple[int, int], reason: str
) -> None:
    leaf = pki.ca.service("server", not_before=_days(window[0]), not_after=_days(window[1]))
    async with tls_server(pki.server_ctx(leaf), echo) as server:
        with pytest.raises(TlsHandshakeError, match=reason):
            await tls_connect("127.0.0.1", server.port, pki.client_ctx())


async def test_expired_client_cert_is_refused(pki: Pki) -> None:
    leaf = pki.ca.service("client", not_before=_days(-10), not_after=_days(-1))
    async with tls_server(pki.server_ctx(), echo) as server:
        with pytest.raises((TlsHandshakeError, trio.BrokenResourceError)):
            await exchange(server.port, pki.client_ctx(leaf))
    assert "expired" in str(server.errors[0])


async def test_tls12_client_is_refused(pki: Pki) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    old.load_verify_locations(cadata=pki.ca.root_pem.decode())
    async with tls_server(pki.server_ctx(), echo) as server:
        with pytest.raises(TlsHandshakeError):
            await tls_connect("127.0.0.1", server.port, old)
    assert len(server.errors) == 1
    assert isinstance(server.errors[0], TlsHandshakeError)


async def test_session_resumption(pki: Pki) -> None:
    ctx = pki.client_ctx()
    async with tls_server(pki.server_ctx(), echo) as server:
        first = await tls_connect("127.0.0.1", server.port, ctx)
        try:
            assert not first.session_reused
            await first.send_all(b"one")
            assert await first.receive_some() == b"one"  # also reads the session tickets
            session = first.session
        finally:
            await first.aclose()
        assert session is not None
        second = await tls_connect("127.0.0.1", server.port, ctx, session=session)
        try:
            assert second.session_reused
            check_peer(second, spiffe("server"))
            await second.send_all(b"two")
            assert await second.receive_some() == b"two"
        finally:
            await second.aclose()
        # A session from another context (a rotated certificate) means a full handshake.
        third = await tls_connect("127.0.0.1", server.port, pki.client_ctx(), session=session)
        try:
            assert not third.session_reused
        finally:
            await third.aclose()
    assert server.reused == [False, True, False]
    # The resumed session still carries the client's identity.
    assert server.peers == [spiffe("client")] * 3


async def test_one_ticket_per_handshake_keeps_resuming(pki: Pki) -> None:
    # Servers send one ticket (not OpenSSL's two); a pool that takes the newest session of
    # each connection resumes every time, from resumed connections' tickets too.
    server_ctx = pki.server_ctx()
    assert server_ctx.num_tickets == 1
    ctx = pki.client_ctx()
    session = None
    async with tls_server(server_ctx, echo) as server:
        for _ in range(3):
            stream = await tls_connect("127.0.0.1", server.port, ctx, session=session)
            try:
                await stream.send_all(b"x")
                assert await stream.receive_later() == b"x"
                session = stream.session
            finally:
                await stream.aclose()
    assert server.reused == [False, True, True]


async def test_accepted_connection_keeps_nodelay_and_its_address(pki: Pki) -> None:
    # What ListenerManager hands a listener: a socket accepted from bind_tcp's listening
    # socket, its accept() address given, so no per-connection TCP_NODELAY or getpeername.
    listener = bind_tcp("127.0.0.1", 0)
    port = listener.getsockname()[1]
    try:
        async with trio.open_nursery() as nursery:
            clients: list[TlsStream] = []

            async def connect() -> None:
                clients.append(await tls_connect("127.0.0.1", port, pki.client_ctx()))

            nursery.start_soon(connect)
            await trio.lowlevel.wait_readable(listener)
            conn, addr = listener.accept()
            conn.setblocking(False)
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            with trio.fail_after(10):
                server_side = await tls_accept(
                    SocketStream(conn, accepted_from=addr), pki.server_ctx()
                )
        try:
            client_address = clients[0].sock.getsockname()
            assert server_side.peer() == (client_address[0], client_address[1])
            assert SocketStream(clients[0].sock).peer() == ("127.0.0.1", port)
        finally:
            await server_side.aclose()
            await clients[0].aclose()
    finally:
        listener.close()


async def test_sniff_tls_and_plaintext(pki: Pki) -> None:
    listener = bind_tcp("127.0.0.1", 0)
    port = listener.getsockname()[1]
    try:
        plain = await open_tcp("127.0.0.1", port)
        await trio.lowlevel.wait_readable(listener)
        conn, _ = listener.accept()
        accepted = SocketStream(conn)
        try:
            await plain.send_all(b"GET / HTTP/1.1\r\n\r\n")
            with trio.fail_after(10):
                assert await sniff_tls(accepted) is False
            # Nothing consumed.
            assert await accepted.receive_some() == b"GET / HTTP/1.1\r\n\r\n"
        finally:
            await plain.aclose()
            await accepted.aclose()

        async with trio.open_nursery() as nursery:
            results: list[TlsStream] = []

            async def connect() -> None:
                results.append(await tls_connect("127.0.0.1", port, pki.client_ctx()))

            nursery.start_soon(connect)
            await trio.lowlevel.wait_readable(listener)
            conn, _ = listener.accept()
            conn.setblocking(False)
            with trio.fail_after(10):
                assert await sniff_tls(conn) is True
            # The ClientHello is still there for the handshake.
            server_side = await tls_accept(conn, pki.server_ctx())
        try:
            check_peer(server_side, spiffe("client"))
        finally:
            await server_side.aclose()
            await results[0].aclose()
    finally:
        listener.close()


async def test_sniff_end_of_stream_is_not_tls() -> None:
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        b.shutdown(socket.SHUT_WR)
        assert await sniff_tls(a) is False
    finally:
        a.close()
        b.close()


async def test_peer_closing_mid_stream_is_broken(pki: Pki) -> None:
    async def vanish(stream: TlsStream) -> None:
        await stream.send_all(b"partial")
        # TCP FIN without close_notify: a truncation, not an end.
        stream.sock.shutdown(socket.SHUT_RDWR)

    async with tls_server(pki.server_ctx(), vanish) as server:
        client = await tls_connect("127.0.0.1", server.port, pki.client_ctx())
        try:
            assert await client.receive_some() == b"partial"
            with pytest.raises(trio.BrokenResourceError):
                await client.receive_some()
        finally:
            await client.aclose()


async def test_aclose_on_stalled_peer_is_prompt(pki: Pki) -> None:
    stalled = trio.Event()

    async def never_read(stream: TlsStream) -> None:
        await stalled.wait()

    async with tls_server(pki.server_ctx(), never_read) as server:
        client = await tls_connect("127.0.0.1", server.port, pki.client_ctx())
        chunk = b"x" * (256 * 1024)
        # Fill both kernels' buffers: the send parks, then is cut short.
        with trio.move_on_after(0.5):
            for _ in range(4096):  # at most 1 GiB
                await client.send_all(chunk)
        with trio.fail_after(5):
            await client.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await client.receive_some()
        stalled.set()


async def test_interrupted_send_breaks_stream(pki: Pki) -> None:
    release = trio.Event()

    async def slow(stream: TlsStream) -> None:
        await release.wait()

    async with tls_server(pki.server_ctx(), slow) as server:
        client = await tls_connect("127.0.0.1", server.port, pki.client_ctx())
        try:
            with trio.move_on_after(0.5):
                for _ in range(4096):
                    await client.send_all(b"y" * (256 * 1024))
            with pytest.raises(trio.BrokenResourceError):
                await client.send_all(b"more")
            with pytest.raises(trio.BrokenResourceError):
                await client.send_eof()
        finally:
            await client.aclose()
            release.set()


async def test_handshake_bounded_by_caller_scope(pki: Pki) -> None:
    listener = bind_tcp("127.0.0.1", 0)
    port = listener.getsockname()[1]
    try:
        # Nobody answers the ClientHello: the caller's deadline ends the handshake.
        with trio.move_on_after(0.2) as scope:
            await tls_connect("127.0.0.1", port, pki.client_ctx())
        assert scope.cancelled_caught
    finally:
        await trio.lowlevel.checkpoint()
        while True:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                break
            conn.close()
        listener.close()


async def test_closed_stream_raises_closed(pki: Pki) -> None:
    async with tls_server(pki.server_ctx(), echo) as server:
        client = await tls_connect("127.0.0.1", server.port, pki.client_ctx())
        await client.aclose()
        await client.aclose()  # idempotent
        with pytest.raises(trio.ClosedResourceError):
            await client.receive_some()
        with pytest.raises(trio.ClosedResourceError):
            await client.send_all(b"x")
        with pytest.raises(trio.ClosedResourceError):
            await client.send_eof()
        # What was learnt in the handshake stays readable.
        assert client.peer_certificate_der() == pki.server.cert_der
        assert client.session is None


def test_peer_spiffe_id_edge_cases(pki: Pki) -> None:
    assert peer_spiffe_id(pki.server.cert_der) == spiffe("server")
    two = pki.ca.leaf((spiffe("a"), spiffe("b")))
    assert peer_spiffe_id(two.cert_der) is None
    other = pki.ca.leaf(("https://example.test/x",))
    assert peer_spiffe_id(other.cert_der) is None
    mixed = pki.ca.leaf(("https://example.test/x", spiffe("c")))
    assert peer_spiffe_id(mixed.cert_der) == spiffe("c")
    assert peer_spiffe_id(b"not a certificate") is None


def test_contexts_are_tls13_only(pki: Pki) -> None:
    for ctx in (pki.server_ctx(), pki.client_ctx()):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert not ctx.check_hostname
    assert pki.server_ctx(require_client_cert=False).verify_mode == ssl.CERT_OPTIONAL
    with pytest.raises(ValueError, match="no root"):
        client_context(pki.client.cert_pem, pki.client.key_pem, [])


async def test_receive_later_drains_openssl_buffer_first(pki: Pki) -> None:
    async def two_records(stream: TlsStream) -> None:
        await stream.send_all(b"a" * 1000)
        await stream.receive_some()  # hold the connection open until the client is done

    async with tls_server(pki.server_ctx(), two_records) as server:
        client = await tls_connect("127.0.0.1", server.port, pki.client_ctx())
        try:
            assert await client.receive_later(10) == b"a" * 10
            # The rest of the record sits decrypted inside OpenSSL, not on the socket:
            # parking on the fd here would hang.
            got = bytearray()
            with trio.fail_after(10):
                while len(got) < 990:
                    got += await client.receive_later(100)
            assert bytes(got) == b"a" * 990
        finally:
            await client.aclose()


async def test_is_stale(pki: Pki) -> None:
    answer = trio.Event()
    close = trio.Event()

    async def handler(stream: TlsStream) -> None:
        await answer.wait()
        await stream.send_all(b"unasked")
        await close.wait()

    async with tls_server(pki.server_ctx(), handler) as server:
        client = await tls_connect("127.0.0.1", server.port, pki.client_ctx())
        try:
            await trio.sleep(0.05)  # let the session tickets arrive: they aren't staleness
            assert not client.is_stale()
            answer.set()
            await trio.lowlevel.wait_readable(client.sock)
            assert client.is_stale()
        finally:
            close.set()
            await client.aclose()
        assert client.is_stale()

        closing = await tls_connect("127.0.0.1", server.port, pki.client_ctx())
        try:
            close.set()
            answer.set()
            with trio.fail_after(10):
                while not closing.is_stale():
                    await trio.sleep(0.01)
        finally:
            await closing.aclose()


async def test_reset_is_an_error_for_the_peer(pki: Pki) -> None:
    seen: list[BaseException] = []

    async def handler(stream: TlsStream) -> None:
        try:
            await stream.receive_some()
        except trio.BrokenResourceError as exc:
            seen.append(exc)

    async with tls_server(pki.server_ctx(), handler) as server:
        client = await tls_connect("127.0.0.1", server.port, pki.client_ctx())
        client.reset()
        await client.aclose()
    assert len(seen) == 1


async def test_send_eof_after_peer_eof(pki: Pki) -> None:
    async def bye(stream: TlsStream) -> None:
        await stream.send_all(b"bye")
        await stream.send_eof()
        assert await stream.receive_some() == b""

    async with tls_server(pki.server_ctx(), bye) as server:
        client = await tls_connect("127.0.0.1", server.port, pki.client_ctx())
        try:
            assert await receive_all(client) == b"bye"
            await client.send_eof()  # both close_notify done: the session is shut down
            await client.send_eof()  # idempotent
            assert await client.receive_some() == b""
            with pytest.raises(trio.ClosedResourceError):
                await client.send_all(b"late")
        finally:
            await client.aclose()
    assert server.errors == []


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ((b"\x16", b"\x03\x01rest"), True),  # a dribbled record header
        ((b"\x16\x03\x04",), True),
        ((b"\x16\x03\x09",), False),
        ((b"\x16\x02",), False),
        ((b"SSH-2.0-x\r\n",), False),
        ((b"\x16",), False),  # then end of stream
    ],
)
async def test_sniff_first_bytes(chunks: tuple[bytes, ...], expected: bool) -> None:
    a, b = socket.socketpair()
    try:
        async with trio.open_nursery() as nursery:

            async def dribble() -> None:
                for chunk in chunks:
                    b.send(chunk)
                    await trio.sleep(0.02)
                b.shutdown(socket.SHUT_WR)

            nursery.start_soon(dribble)
            with trio.fail_after(10):
                assert await sniff_tls(a) is expected
        # Peeking consumed nothing.
        assert a.recv(64) == b"".join(chunks)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    ("sent", "shut", "expected"),
    [
        (b"", False, None),  # nothing yet: sniff_tls waits
        (b"\x16", False, None),  # a prefix: sniff_tls waits for the rest
        (b"\x16", True, False),  # a prefix, then end of stream
        (b"", True, False),
        (b"\x16\x03\x01rest", False, True),
        (b"\x16\x03\x09", False, False),
        (b"GET / HTTP/1.1\r\n", False, False),
    ],
)
def test_sniffed_tls_answers_without_waiting(
    sent: bytes, shut: bool, expected: bool | None
) -> None:
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.send(sent)
        if shut:
            b.shutdown(socket.SHUT_WR)
        assert sniffed_tls(a) is expected
        if sent:
            assert a.recv(64) == sent  # peeking consumed nothing


async def test_new_server_context_ends_resumption(pki: Pki) -> None:
    ctx = pki.client_ctx()
    async with tls_server(pki.server_ctx(), echo) as old:
        first = await tls_connect("127.0.0.1", old.port, ctx)
        try:
            await first.send_all(b"x")
            await first.receive_some()
            session = first.session
        finally:
            await first.aclose()
    # A renewed certificate means a new server context, with its own ticket keys.
    async with tls_server(pki.server_ctx(pki.ca.service("server")), echo) as new:
        second = await tls_connect("127.0.0.1", new.port, ctx, session=session)
        try:
            assert not second.session_reused
            check_peer(second, spiffe("server"))
        finally:
            await second.aclose()
    assert new.reused == [False]


async def test_closed_stream_never_touches_its_old_descriptor(pki: Pki) -> None:
    # OpenSSL keeps the descriptor number; a closed stream must not read or write it once
    # another socket got that number.
    async with tls_server(pki.server_ctx(), echo) as server:
        client = await tls_connect("127.0.0.1", server.port, pki.client_ctx())
        fd = client.sock.fileno()
        await client.aclose()
        a, b = socket.socketpair()
        try:
            if fd not in (a.fileno(), b.fileno()):
                pytest.skip("the descriptor number was not reused")
            a.setblocking(False)
            b.setblocking(False)
            a.send(b"kept")
            with pytest.raises(trio.ClosedResourceError):
                await client.receive_some()
            with pytest.raises(trio.ClosedResourceError):
                await client.send_all(b"x")
            assert client.is_stale()
            assert b.recv(16) == b"kept"  # nobody read it
            with pytest.raises(BlockingIOError):
                a.recv(16)  # nobody wrote to it
        finally:
            a.close()
            b.close()


@asynccontextmanager
async def dribbling_relay(port: int, piece: int) -> AsyncIterator[int]:
    """A TCP relay to ``port`` on 127.0.0.1 that passes the server's bytes on ``piece`` bytes at
    a time, each after a pause: TLS records reach the client in several reads."""
    listener = bind_tcp("127.0.0.1", 0)

    async def pipe(src: SocketStream, dst: SocketStream, size: int | None) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await src.receive_some():
                for start in range(0, len(data), size or len(data)):
                    if size:
                        await trio.sleep(0.002)
                    await dst.send_all(data[start : start + (size or len(data))])
            await dst.send_eof()

    async def relay(conn: socket.socket) -> None:
        down = SocketStream(conn)
        up = await open_tcp("127.0.0.1", port)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pipe, down, up, None)
                nursery.start_soon(pipe, up, down, piece)
        finally:
            down.close_nowait()
            up.close_nowait()

    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            await trio.lowlevel.wait_readable(listener)
            conn, _ = listener.accept()
            nursery.start_soon(relay, conn)

        nursery.start_soon(serve)
        try:
            yield listener.getsockname()[1]
        finally:
            nursery.cancel_scope.cancel()
            trio.lowlevel.notify_closing(listener)
            listener.close()


async def test_receive_later_woken_by_part_of_a_record_waits_for_the_rest(pki: Pki) -> None:
    """The park ends at the first bytes on the socket; a record that isn't whole yet must
    be waited for, not answered with an empty read (an end of stream)."""

    async def answer(stream: TlsStream) -> None:
        while data := await stream.receive_some():
            await stream.send_all(data.upper() * 50)

    async with (
        tls_server(pki.server_ctx(), answer) as server,
        dribbling_relay(server.port, 7) as port,
    ):
        client = await tls_connect("127.0.0.1", port, pki.client_ctx())
        try:
            with trio.fail_after(20):
                for word in (b"one", b"two"):
                    await client.send_all(word)
                    got = b""
                    while len(got) < 150:
                        data = await client.receive_later()
                        assert data, "an empty read: the stream would look ended"
                        got += data
                    assert got == word.upper() * 50
        finally:
            await client.aclose()


async def test_receive_later_after_both_close_notify_is_end_of_stream(pki: Pki) -> None:
    """Our close_notify first, then the peer's: a parked read answers end of stream."""
    done = trio.Event()

    async def reply_then_close(stream: TlsStream) -> None:
        await stream.send_all(b"hi")
        assert await stream.receive_some() == b""  # the client's close_notify
        await trio.sleep(0.05)  # the client is parked by now
        await stream.send_eof()
        done.set()

    async with tls_server(pki.server_ctx(), reply_then_close) as server:
        client = await tls_connect("127.0.0.1", server.port, pki.client_ctx())
        try:
            with trio.fail_after(10):
                assert await client.receive_later() == b"hi"
                await client.send_eof()
                assert await client.receive_later() == b""
                await done.wait()
        finally:
            await client.aclose()
    assert server.errors == []
