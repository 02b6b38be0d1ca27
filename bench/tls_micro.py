"""Micro-benchmark: meshd's TlsStream against trio.SSLStream, and TLS 1.3 handshakes.

A child process (stdlib blocking ``ssl``, one thread per connection) is the mTLS echo
server; this process runs only the client, so its CPU time is the client side's.

    PYTHONPATH=. python bench/tls_micro.py [--requests 20000] [--handshakes 500] [--size 1024]

Prints, per stream kind (plus plain TCP as the floor), requests/s and client CPU µs per echo
round trip on one keep-alive connection; then handshakes/s and client CPU µs per handshake,
full and resumed (connect + handshake + close, sequential).
Not a test: numbers depend on the machine; the ratios are what matter.
"""

from __future__ import annotations

import argparse
import datetime as dt
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshd.net.stream import open_tcp
from meshd.net.tls import TlsStream, tls_connect
from meshd.net.tlsconfig import check_peer, client_context, server_context

TRUST_DOMAIN = "bench.test"
MAX_REQUESTS = 200_000
MAX_HANDSHAKES = 5_000

Receive = Callable[[], Awaitable[bytes | bytearray]]


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_pki(out: Path) -> None:
    """A root and two SPIFFE leaves (server, client) as PEM files in ``out``."""
    now = dt.datetime.now(dt.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench root")])
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    (out / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        uri = f"spiffe://{TRUST_DOMAIN}/ns/default/svc/{name}"
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(root_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(root_key, hashes.SHA256())
        )
        (out / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (out / f"{name}.key").write_bytes(_pem_key(key))


def _echo(conn: socket.socket) -> None:
    with conn:
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except (OSError, ssl.SSLError):
            pass


def serve(pki: Path) -> None:
    """The child: mTLS and plain echo servers on 127.0.0.1; prints their ports, stops when
    stdin closes."""
    ctx = server_context(
        (pki / "server.pem").read_bytes(),
        (pki / "server.key").read_bytes(),
        (pki / "root.pem").read_bytes(),
    )
    listener = socket.create_server(("127.0.0.1", 0))
    plain = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], plain.getsockname()[1], flush=True)

    def accept_plain() -> None:
        while True:
            conn, _ = plain.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    def accept_forever() -> None:
        while True:
            raw, _ = listener.accept()
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                conn = ctx.wrap_socket(raw, server_side=True)
            except (OSError, ssl.SSLError):
                raw.close()
                continue
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_forever, daemon=True).start()
    threading.Thread(target=accept_plain, daemon=True).start()
    sys.stdin.read()


async def _round_trips(
    send: Callable[[bytes], Awaitable[None]],
    receive: Receive,
    count: int,
    payload: bytes,
) -> tuple[float, float]:
    size = len(payload)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        await send(payload)
        got = 0
        while got < size:
            data = await receive()
            if not data:
                raise SystemExit("server closed early")
            got += len(data)
    return time.perf_counter() - wall, time.process_time() - cpu


async def bench_streams(
    port: int, plain_port: int, ctx: ssl.SSLContext, requests: int, size: int
) -> dict[str, tuple[float, float]]:
    """The kinds take turns in a few rounds, so drift in machine load hits them alike."""
    payload = b"\xa5" * size
    rounds = 4
    per_round = max(1, requests // rounds)
    tls = await tls_connect("127.0.0.1", port, ctx)
    tcp = await open_tcp("127.0.0.1", plain_port)
    sslstream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), ctx)
    try:
        check_peer(tls, f"spiffe://{TRUST_DOMAIN}/ns/default/svc/server")
        await sslstream.do_handshake()
        kinds: dict[str, tuple[Callable[[bytes], Awaitable[None]], Receive]] = {
            "TlsStream": (tls.send_all, tls.receive_some),
            # What the HTTP proxy uses for replies: park first, skip the futile read.
            "TlsStream later": (tls.send_all, tls.receive_later),
            "trio.SSLStream": (sslstream.send_all, sslstream.receive_some),
            "plain SocketStream": (tcp.send_all, tcp.receive_some),
        }
        totals = dict.fromkeys(kinds, (0.0, 0.0))
        for send, receive in kinds.values():
            await _round_trips(send, receive, min(per_round, 1000), payload)  # warm up
        for _ in range(rounds):
            for name, (send, receive) in kinds.items():
                wall, cpu = await _round_trips(send, receive, per_round, payload)
                totals[name] = (totals[name][0] + wall, totals[name][1] + cpu)
    finally:
        await tls.aclose()
        await tcp.aclose()
        await sslstream.aclose()
    return totals


async def bench_handshakes(
    port: int, ctx: ssl.SSLContext, count: int
) -> dict[str, tuple[float, float]]:
    first = await tls_connect("127.0.0.1", port, ctx)
    try:
        await first.send_all(b"x")
        await first.receive_some()  # brings the session tickets
        session = first.session
    finally:
        await first.aclose()
    if session is None:
        raise SystemExit("no TLS session to resume")
    results: dict[str, tuple[float, float]] = {}
    for name, resume in (("full", None), ("resumed", session)):
        reused = 0
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            stream: TlsStream = await tls_connect("127.0.0.1", port, ctx, session=resume)
            reused += stream.session_reused
            await stream.aclose()
        results[name] = (time.perf_counter() - wall, time.process_time() - cpu)
        if resume is not None and reused != count:
            print(f"  warning: only {reused}/{count} handshakes resumed")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--handshakes", type=int, default=500)
    parser.add_argument("--size", type=int, default=1024, help="echo payload bytes")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    requests = max(4, min(args.requests, MAX_REQUESTS)) // 4 * 4
    handshakes = max(1, min(args.handshakes, MAX_HANDSHAKES))
    with tempfile.TemporaryDirectory(prefix="tls-micro-") as tmp:
        pki = Path(tmp)
        make_pki(pki)
        ctx = client_context(
            (pki / "client.pem").read_bytes(),
            (pki / "client.key").read_bytes(),
            (pki / "root.pem").read_bytes(),
        )
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(pki)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            port, plain_port = map(int, child.stdout.readline().split())
            streams = trio.run(bench_streams, port, plain_port, ctx, requests, args.size)
            hands = trio.run(bench_handshakes, port, ctx, handshakes)
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(timeout=30)
            if child.stdout is not None:
                child.stdout.close()
    print(f"{args.size}-byte echo round trips, one keep-alive connection, n={requests}")
    for name, (wall, cpu) in streams.items():
        print(
            f"  {name:>18}: {requests / wall:8.0f} req/s   "
            f"client CPU {cpu / requests * 1e6:6.1f} µs/round trip"
        )
    print(f"TLS 1.3 handshakes (connect + handshake + close), n={handshakes}")
    for name, (wall, cpu) in hands.items():
        print(
            f"  {name:>18}: {handshakes / wall:8.0f} /s       "
            f"client CPU {cpu / handshakes * 1e6:6.0f} µs/handshake"
        )


if __name__ == "__main__":
    main()
