"""The sidecar token handed out with an enrollment or renewal: bound to the leaf issued.

It expires with the leaf, so the sidecar gets the next one with its next renewal (at 50-70 %
of the leaf's life) and never runs out. A renewal revokes the tokens bound to the leaf it
presented: each instance holds one live token at a time.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography import x509

from controld.auth import TokenAuth
from controld.ca.service import Issued
from controld.sidecar_tokens import WORKLOAD_ID_RE

__all__ = ["mint_bound_token", "serial_hex"]


def serial_hex(cert: x509.Certificate) -> str:
    """A certificate's serial number in lower-case hex (how a token names its leaf)."""
    return f"{cert.serial_number:x}"


async def mint_bound_token(
    auth: TokenAuth, issued: Issued, *, replaces: x509.Certificate | None = None
) -> str:
    """A sidecar token bound to ``issued``'s identity and leaf, expiring with the leaf;
    with ``replaces`` (the leaf presented for a renewal) that leaf's tokens are revoked."""
    identity = issued.spiffe_id
    workload = WORKLOAD_ID_RE.match(identity)
    if workload is None:  # the CA only signs workload IDs
        raise ValueError(f"{identity} is not a workload identity")
    namespace, service = workload.group(1), workload.group(2)
    cert = issued.certificate
    ttl = (cert.not_valid_after_utc - datetime.now(UTC)).total_seconds()
    token, _ = await auth.mint_sidecar(
        service, namespace, ttl_s=max(1.0, ttl), identity=identity, serial=serial_hex(cert)
    )
    if replaces is not None and auth.tokens is not None:
        await auth.tokens.revoke_bound(identity, serial_hex(replaces))
    return token
