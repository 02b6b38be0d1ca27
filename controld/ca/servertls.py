"""controld's own TLS identity: a certificate from its CA and the server context built on it.

The key is made in memory at start (ECDSA P-256) and never written. The certificate carries
the URI SAN ``spiffe://<trust domain>/controld`` (what sidecars check), plus ``localhost``, the
host name, the operator's ``--tls-san`` names and the loopback and bind addresses (for
``curl --cacert`` and other host-name checking clients). It is issued again, into a new
context, when the CA's roots or signer change (a rotation step), when the trust domain
changes and when half its lifetime has passed; new connections get the new context, open
ones keep theirs.

The context asks for a client certificate but doesn't require one (TLS 1.3 only): one that is
presented must chain to the current bundle, so a retired root's leaves fail the handshake of new
connections. Endpoints that need a caller identity (``/v1/renew``) read it from the ASGI TLS
extension the server fills in.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controld.ca.authority import IPAddress, controld_spiffe_id, sign_server
from controld.ca.rotation import CertificateAuthority, RotationState
from meshcore.pemfile import pem_path

__all__ = ["ServerCertificate", "ServerTls", "server_sans"]

log = structlog.get_logger("controld.tls")

#: How often the trust domain is looked at (it comes from the Mesh resource).
_CHECK_S = 5.0


Sans = tuple[tuple[str, ...], tuple[IPAddress, ...]]


def server_sans(bind_host: str, extra: tuple[str, ...]) -> Sans:
    """DNS names and IPs for the certificate of a listener on ``bind_host``."""
    dns = ["localhost", socket.gethostname()]
    ips: list[IPAddress] = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    for name in (bind_host, *extra):
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            if name:
                dns.append(name)
            continue
        if not ip.is_unspecified:
            ips.append(ip)
    return tuple(dict.fromkeys(dns)), tuple(dict.fromkeys(ips))


@dataclass(frozen=True, slots=True)
class ServerCertificate:
    """One issued server certificate and its context."""

    cert: x509.Certificate
    context: ssl.SSLContext
    trust_domain: str
    bundle_index: int
    #: The rotation state it was issued in (a revocation moves the index, not this).
    state: RotationState | None = None

    def as_json(self, listen: str) -> dict[str, object]:
        """For ``GET /v1/ca``."""
        san = self.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(v) for v in san.get_values_for_type(x509.DNSName)]
        names += [str(v) for v in san.get_values_for_type(x509.IPAddress)]
        return {
            "listen": listen,
            "spiffe_id": controld_spiffe_id(self.trust_domain),
            "not_after": self.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "sans": names,
        }


class ServerTls:
    """Keeps controld's server certificate and context current (a service: :meth:`run`)."""

    def __init__(
        self,
        ca: CertificateAuthority,
        trust_domain: Callable[[], str],
        *,
        leaf_ttl: Callable[[], timedelta],
        dns_names: tuple[str, ...] = (),
        ips: tuple[IPAddress, ...] = (),
    ) -> None:
        self._ca = ca
        self._trust_domain = trust_domain
        self._leaf_ttl = leaf_ttl
        self._dns_names = dns_names
        self._ips = ips
        self.current = self._issue()

    def context(self) -> ssl.SSLContext:
        """The context new connections use."""
        return self.current.context

    def _issue(self) -> ServerCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        domain = self._trust_domain()
        ttl = self._leaf_ttl()
        index = self._ca.index
        signer = self._ca.signer
        cert = sign_server(
            signer,
            key.public_key(),
            domain,
            dns_names=self._dns_names,
            ips=self._ips,
            ttl=ttl,
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cadata="".join(self._ca.bundle_pem()))
        # The leaf with the root that signed it: given a leaf alone, OpenSSL builds the chain
        # it sends from the verify store on every handshake, verifying the leaf's signature
        # each time (as meshd's Identity.presented_pem says); a chain given is sent as it is,
        # the same two certificates.
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        chain_pem = cert_pem + signer.cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with pem_path(chain_pem) as cert_path, pem_path(key_pem) as key_path:
            ctx.load_cert_chain(cert_path, key_path)
        return ServerCertificate(cert, ctx, domain, index, self._ca.state)

    def _stale(self, now: datetime) -> bool:
        current = self.current
        cert = current.cert
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        half = start + (end - start) / 2
        return (
            current.state != self._ca.state
            or current.trust_domain != self._trust_domain()
            or now >= half
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Re-issue when stale (see the module doc) until cancelled."""
        task_status.started()
        seen = self.current.bundle_index
        while True:
            seen = await self._ca.wait_bundle(seen, _CHECK_S)
            if self._stale(datetime.now(UTC)):
                self.current = self._issue()
                log.info(
                    "server certificate issued",
                    spiffe_id=controld_spiffe_id(self.current.trust_domain),
                    not_after=self.current.cert.not_valid_after_utc.isoformat(),
                    bundle_index=self.current.bundle_index,
                )
