"""The pure parts of ``bench/run mtls``: certificates, rendered configs, s_time parsing."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshcore.model import Bootstrap, Snapshot
from meshcore.model.loading import load_model
from meshd.identity.material import parse_identity, split_pem_certificates
from meshd.net.tlsconfig import client_context, peer_spiffe_id, server_context

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

import certs  # noqa: E402
import mtls  # noqa: E402
from common import BenchError, render  # noqa: E402

S_TIME_OUTPUT = """Collecting connection statistics for 5 seconds
*****************************************************

1906 connections in 1.67s; 1141.32 connections/user sec, bytes read 295430
1906 connections in 6 real seconds, 155 bytes read per connection
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> certs.Pki:
    return certs.write_pki(tmp_path_factory.mktemp("pki"), mtls.SERVICES)


def test_leaves_are_valid_mesh_identities_with_a_dns_name(pki: certs.Pki) -> None:
    bundle = split_pem_certificates(pki.root.read_bytes())
    for service, files in pki.leaves.items():
        identity = parse_identity(files.key.read_bytes(), files.cert.read_bytes(), bundle)
        assert identity.spiffe_id == certs.spiffe_id(service)
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [certs.dns_name(service)]
        assert peer_spiffe_id(cert.public_bytes(serialization.Encoding.DER)) == certs.spiffe_id(
            service
        )
        assert files.key.stat().st_mode & 0o777 == 0o600


def test_meshd_contexts_accept_the_material(pki: certs.Pki) -> None:
    api, web = pki.leaves["api"], pki.leaves["web"]
    root = pki.root.read_bytes()
    server = server_context(api.cert.read_bytes(), api.key.read_bytes(), root)
    client = client_context(web.cert.read_bytes(), web.key.read_bytes(), root)
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert client.minimum_version == ssl.TLSVersion.TLSv1_3


def test_sidecar_configs_load_as_strict_mtls(pki: certs.Pki, tmp_path: Path) -> None:
    ports = {"admin_port": 20001, "app_port": 20002, "inbound_port": 20003}
    for service, port in (("api", 20003), ("web", 20004)):
        workdir = tmp_path / service
        workdir.mkdir()
        path = mtls.sidecar_config(workdir, pki, service, port=port, **ports)
        boot = load_model(Bootstrap, path)
        assert boot.service == service
        assert boot.identity is not None and boot.identity.static is not None
        assert boot.identity.static.cert_file == pki.leaves[service].cert
        assert boot.identity.static.bundle_file == pki.root
        snap = load_model(Snapshot, workdir / "snapshot.yaml")
        assert snap.mtls == "strict"
        assert snap.identity is not None
        assert snap.identity.spiffe_id == certs.spiffe_id(service)
        [listener] = snap.listeners
        assert listener.direction == ("inbound" if service == "api" else "outbound")
        # As the nginx pair's keepalive_requests: no mTLS connection (nor wrk's) closed, and
        # handshaken again, every 1000 requests.
        assert listener.max_requests_per_connection == 1_000_000
    [cluster] = load_model(Snapshot, tmp_path / "web" / "snapshot.yaml").clusters
    assert cluster.tls is not None
    assert cluster.tls.spiffe_id == certs.spiffe_id("api")
    assert [(e.host, e.port) for e in cluster.endpoints] == [("127.0.0.1", 20003)]


@pytest.mark.skipif(shutil.which("nginx", path="/usr/sbin:/usr/bin") is None, reason="no nginx")
@pytest.mark.parametrize("template", ["nginx-mtls-back.conf", "nginx-mtls-front.conf"])
def test_nginx_configs_pass_nginx_t(pki: certs.Pki, tmp_path: Path, template: str) -> None:
    # The templates find the certificates in ../pki, as the suite lays them out.
    (tmp_path / "pki").symlink_to(pki.root.parent)
    workdir = tmp_path / "nginx"
    workdir.mkdir()
    ports = {"port": 1, "back_port": 2, "backend_port": 3}
    conf = render(template, workdir / "nginx.conf", dir=workdir, user_line="", **ports)
    nginx = shutil.which("nginx", path="/usr/sbin:/usr/bin")
    assert nginx is not None
    argv = [nginx, "-t", "-q", "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "e.log")]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    assert done.returncode == 0, done.stderr
    text = conf.read_text()
    if "proxy_ssl_name" in text:
        assert f"proxy_ssl_name {certs.dns_name('api')};" in text


RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\nhello world\n"


@contextlib.contextmanager
def tls_http_server(ctx: ssl.SSLContext) -> Iterator[int]:
    """A blocking TLS server on 127.0.0.1 answering each request with RESPONSE, then closing."""
    stop = threading.Event()

    def serve(listener: socket.socket) -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            with raw:
                raw.settimeout(5.0)
                try:
                    with ctx.wrap_socket(raw, server_side=True) as tls:
                        tls.recv(4096)
                        tls.sendall(RESPONSE)
                except (OSError, ssl.SSLError):
                    continue  # a refused client certificate

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.05)
        thread = threading.Thread(target=serve, args=(listener,))
        thread.start()
        try:
            yield listener.getsockname()[1]
        finally:
            stop.set()
            thread.join()


@pytest.mark.parametrize("require_client_cert", [True, False])
def testcheck_mtls_server(pki: certs.Pki, require_client_cert: bool) -> None:
    api = pki.leaves["api"]
    ctx = server_context(
        api.cert.read_bytes(),
        api.key.read_bytes(),
        pki.root.read_bytes(),
        require_client_cert=require_client_cert,
    )
    with tls_http_server(ctx) as port:
        if require_client_cert:
            assert mtls.check_mtls_server("api", port, pki) == len(RESPONSE)
        else:
            with pytest.raises(BenchError, match="without a certificate: not mTLS"):
                mtls.check_mtls_server("api", port, pki)


def test_parse_s_time() -> None:
    assert mtls.parse_s_time(S_TIME_OUTPUT) == (1906, 295430)
    with pytest.raises(BenchError, match="s_time failed"):
        mtls.parse_s_time("Collecting connection statistics for 5 seconds\nERROR\n")


@pytest.mark.parametrize(
    ("connections", "bytes_read", "refused", "expected"),
    [
        (1906, 295430, 0, 1906),  # every connection read a whole 155-byte response
        (10, 155 * 7, 0, 7),  # three were reset before the response (meshd STRICT)
        (10, 367 * 10, 10, 0),  # nginx answered 400 (longer) to all: refused, not counted
        (10, 155 * 10 + 154, 0, 10),  # never more than the connections made
        (0, 0, 0, 0),
    ],
)
def test_completed_handshakes(
    connections: int, bytes_read: int, refused: int, expected: int
) -> None:
    assert mtls.completed_handshakes(connections, bytes_read, 155, refused) == expected


def test_rate_script_offers_the_rate(tmp_path: Path) -> None:
    script = mtls.rate_script(tmp_path / "rate.lua", 20).read_text()
    assert "return math.random(0, 40)" in script
    assert not re.search(r"@\w+@", script)


def test_settings_are_clamped(monkeypatch: pytest.MonkeyPatch) -> None:
    assert mtls.Settings.from_env() == mtls.Settings()
    monkeypatch.setenv("BENCH_MTLS_HS_CLIENTS", "100")
    monkeypatch.setenv("BENCH_MTLS_HS_SECONDS", "0")
    settings = mtls.Settings.from_env()
    assert (settings.hs_clients, settings.hs_seconds) == (8, 1)


def test_plain_pair_configs_have_no_identity(pki: certs.Pki, tmp_path: Path) -> None:
    """``without_identity``: the same sidecar, which then can do no TLS (bench/pair_instructions
    compares this pair with the mTLS one)."""
    ports = {"admin_port": 20001, "app_port": 20002, "inbound_port": 20003, "port": 20004}
    path = mtls.sidecar_config(tmp_path, pki, "web", **ports)
    before = load_model(Bootstrap, path)
    mtls.without_identity(path)
    boot = load_model(Bootstrap, path)
    assert before.identity is not None and boot.identity is None
    assert boot.model_dump(exclude={"identity"}) == before.model_dump(exclude={"identity"})
    assert load_model(Snapshot, tmp_path / "snapshot.yaml").clusters[0].tls is not None


def test_pair_instructions_counts_calls_by_callee(tmp_path: Path) -> None:
    """The callgrind dump parser of bench/pair_instructions.py: calls summed over callers,
    with names given once and referred to by number after."""
    import pair_instructions

    dump = tmp_path / "callgrind.out.1"
    dump.write_text(
        "events: Ir\nfn=(1) caller_a\n0 5\ncfn=(2) SSL_read_ex\ncalls=3 0\n0 300\n"
        "cfn=(3) poll\ncalls=1 0\n0 10\nfn=(4) caller_b\n0 1\ncfn=(2)\ncalls=2 0\n0 200\n"
        "fn=(2)\n0 500\n"
    )
    assert pair_instructions.calls(dump, ("SSL_read_ex", "poll", "recv")) == {
        "SSL_read_ex": 5,
        "poll": 1,
    }
