"""The floor of a Trio mTLS sidecar pair on this machine: relay bytes through TLS, no HTTP work.

Run twice, as the two sides of a pair:

* ``out``: accepts plaintext on ``LISTEN_PORT``; per client connection, opens one TLS 1.3
  connection with a client certificate to ``UPSTREAM_PORT`` (the ``in`` side);
* ``in``: accepts TLS 1.3 on ``LISTEN_PORT``, requires a client certificate from ``ROOT``, and
  per connection opens one plaintext connection to ``UPSTREAM_PORT`` (the backend).

A read from one side is written to the other, then one read of the reply is written back: only
correct for one-read requests and responses (wrk's GETs against a small fixed body), which is
all it is for. The same non-blocking ``ssl.SSLSocket`` under ``trio.lowlevel`` waits as meshd's
TLS streams, one connection upstream per connection downstream (no pool to look up), no
parsing, no routing, no headers. Not a proxy; a yardstick for ``bench/run mtls``.

Usage: ``python tls_relay.py out|in LISTEN_PORT UPSTREAM_PORT CERT KEY ROOT``
"""

from __future__ import annotations

import socket
import ssl
import sys

import trio
from trio_relay import nodelay, serve  # beside this script

Conn = socket.socket  # an ssl.SSLSocket is one too


async def _handshake(sock: ssl.SSLSocket) -> None:
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            await trio.lowlevel.wait_readable(sock)
        except ssl.SSLWantWriteError:
            await trio.lowlevel.wait_writable(sock)


async def _recv(sock: Conn) -> bytes:
    while True:
        try:
            return sock.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError):
            await trio.lowlevel.wait_readable(sock)
        except ssl.SSLWantWriteError:
            await trio.lowlevel.wait_writable(sock)


async def _send(sock: Conn, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except (BlockingIOError, ssl.SSLWantWriteError):
            await trio.lowlevel.wait_writable(sock)
            continue
        except ssl.SSLWantReadError:
            await trio.lowlevel.wait_readable(sock)
            continue
        view = view[sent:]


async def _relay(client: Conn, upstream: Conn) -> None:
    try:
        while True:
            data = await _recv(client)
            if not data:
                return
            await _send(upstream, data)
            reply = await _recv(upstream)
            if not reply:
                return
            await _send(client, reply)
    except OSError:
        return
    finally:
        client.close()
        upstream.close()


def _context(side: str, cert: str, key: str, root: str) -> ssl.SSLContext:
    purpose = ssl.PROTOCOL_TLS_CLIENT if side == "out" else ssl.PROTOCOL_TLS_SERVER
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(root)
    return ctx


async def _serve_one(side: str, ctx: ssl.SSLContext, client: socket.socket, port: int) -> None:
    upstream_raw = nodelay(socket.socket())
    try:
        upstream_raw.connect(("127.0.0.1", port))
    except BlockingIOError:
        await trio.lowlevel.wait_writable(upstream_raw)
    except OSError:
        client.close()
        upstream_raw.close()
        return
    try:
        if side == "out":
            tls = ctx.wrap_socket(upstream_raw, do_handshake_on_connect=False)
            await _handshake(tls)
            await _relay(client, tls)
        else:
            tls = ctx.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
            await _handshake(tls)
            await _relay(tls, upstream_raw)
    except OSError:
        client.close()
        upstream_raw.close()


async def main(side: str, listen_port: int, upstream_port: int, ctx: ssl.SSLContext) -> None:
    """Accept on 127.0.0.1:``listen_port`` and relay to ``upstream_port`` until killed."""
    await serve(listen_port, lambda client: _serve_one(side, ctx, client, upstream_port))


if __name__ == "__main__":
    side_arg, listen_arg, upstream_arg, *files = sys.argv[1:]
    if side_arg not in ("out", "in") or len(files) != 3:
        sys.exit(__doc__)
    trio.run(main, side_arg, int(listen_arg), int(upstream_arg), _context(side_arg, *files))
