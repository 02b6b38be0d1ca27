"""How meshd trusts controld: which roots verify its certificate, and the contexts to call it.

controld's TLS listener presents a certificate from its own CA with the SPIFFE ID
``spiffe://<trust domain>/controld``; every connection checks it.

* **First contact** (no identity yet): the roots of ``identity.ca_file`` if configured, else
  the roots the join token pins (:mod:`meshcore.pki`). With pins, the bundle is fetched once
  over TLS *without* verification, and only its roots whose pin the token carries are kept:
  a man in the middle can't add a root of its own. Neither: enrollment is refused.
* **With an identity**: its trust bundle (which follows rotations); the leaf is presented as
  client certificate, which is what renewal requires (mutual TLS).
* **Identity expired** (dropped): the last bundle, anonymously.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from meshcore.pki import parse_join_token_pins, spki_pin
from meshd.control.client import ControlClient, ControlUnavailable
from meshd.identity.client import IdentityClient
from meshd.identity.errors import IdentityError
from meshd.identity.material import Identity, split_pem_certificates
from meshd.net.tlsconfig import anonymous_client_context, client_context

__all__ = [
    "FIELD",
    "ControldTrust",
    "first_contact",
    "pinned_roots",
    "read_ca_file",
    "unverified_context",
]

#: The bootstrap field naming controld's TLS address, for error messages.
FIELD = "identity.controld_url"

Pems = tuple[bytes, ...]


def unverified_context() -> ssl.SSLContext:
    """TLS 1.3 without verifying the server: only to fetch the bundle that pins then check."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def pinned_roots(roots: Pems, pins: tuple[str, ...]) -> Pems:
    """The roots among ``roots`` whose pin is in ``pins`` (unparseable ones are skipped)."""
    kept = []
    for pem in roots:
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            continue
        if spki_pin(cert) in pins:
            kept.append(pem)
    return tuple(kept)


def read_ca_file(path: Path) -> Pems:
    """The PEM certificates in ``path``; :class:`IdentityError` when unreadable or empty."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"identity.ca_file {path}: {exc.strerror or exc}") from exc
    roots = split_pem_certificates(data)
    if not roots:
        raise IdentityError(f"identity.ca_file {path}: no PEM certificate in it")
    return roots


class ControldTrust:
    """The TLS context and expected SPIFFE ID for each new connection to controld."""

    def __init__(self, current: Callable[[], Identity | None] = lambda: None) -> None:
        #: The identity in force (the identity service points this at itself).
        self.current = current
        #: First-contact roots (``ca_file`` or pinned) and trust domain, until an identity.
        self.anchors: Pems = ()
        self.trust_domain: str | None = None
        #: The roots of the last identity (for when it expires).
        self._last_bundle: Pems = ()
        self._cached: tuple[object, ssl.SSLContext] | None = None

    def context(self) -> ssl.SSLContext:
        """A context for a new connection; :class:`ControlUnavailable` without any roots."""
        identity = self.current()
        if identity is not None:
            self._last_bundle = identity.bundle_pems
            key: object = (identity.cert_pem, identity.bundle_pems)
        else:
            roots = key = self.anchors or self._last_bundle
            if not roots:
                raise ControlUnavailable("no roots to verify controld with yet")
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        if identity is not None:
            ctx = client_context(identity.presented_pem, identity.key_pem, identity.bundle_pems)
        else:
            ctx = anonymous_client_context(roots)
        self._cached = (key, ctx)
        return ctx

    def peer_id(self) -> str | None:
        """``spiffe://<trust domain>/controld``, the trust domain from the identity."""
        identity = self.current()
        domain = self.trust_domain
        if identity is not None:
            domain = identity.spiffe_id.removeprefix("spiffe://").split("/", 1)[0]
        return None if domain is None else f"spiffe://{domain}/controld"


async def first_contact(
    trust: ControldTrust, control: ControlClient, token: str, ca_file: Path | None
) -> None:
    """Set ``trust``'s anchors and trust domain before enrolling (see the module doc).

    Raises :class:`IdentityError` when there is nothing to verify controld with, and
    :class:`ControlUnavailable` when controld's CA isn't the pinned one (retried: a man in the
    middle may go away, and controld may be mid-rotation).
    """
    if ca_file is not None:
        trust.anchors = read_ca_file(ca_file)
        probe = control  # verified by the operator's roots
    else:
        pins = parse_join_token_pins(token)
        if not pins:
            raise IdentityError(
                f"cannot verify controld at {control.url}: the join token carries no CA pin "
                "and identity.ca_file is not set"
            )
        probe = ControlClient(
            control.url, tls=unverified_context, user_agent="meshd-identity", field=FIELD
        )
    try:
        bundle = await IdentityClient(probe).watch_bundle(None)
    finally:
        probe.close()
    if ca_file is None:
        roots = pinned_roots(bundle.roots, pins)
        if not roots:
            raise ControlUnavailable(
                f"controld's CA at {control.url} does not match the join token's pin"
            )
        trust.anchors = roots
    trust.trust_domain = bundle.trust_domain
