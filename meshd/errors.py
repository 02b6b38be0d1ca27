"""Root of the errors raised by :mod:`meshd`, and the one table of the proxy's own answers.

Every error the HTTP proxy answers itself has a reason (its ``x-meshd-error`` header and the
access log's ``error`` field) and a status. :data:`PROXY_ERRORS` is the only place that pairs
them: an error carries its reason and looks its status up here, so no caller decides a status
on its own. docs/sidecar.md ("Errors") lists the same table.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

#: reason -> status of every answer the proxy gives on its own behalf (access policy and JWT
#: refusals and redirects excepted: their status comes from the policy or the route).
PROXY_ERRORS: Final[Mapping[str, int]] = MappingProxyType(
    {
        # The client's request.
        "bad_request": 400,
        "invalid_host": 400,
        "no_route": 404,
        "escaped_slash": 400,
        "rate_limited": 429,
        "connect_unsupported": 405,
        "request_timeout": 408,
        "headers_too_large": 431,
        "too_many_headers": 431,
        "unsupported_http_version": 505,
        # The way upstream.
        "upstream_connect_failed": 502,
        "upstream_reset": 502,
        "upstream_protocol_error": 502,
        "upstream_response_headers_too_large": 502,
        "upstream_unexpected_upgrade": 502,
        "upstream_tls_failed": 502,
        "upstream_identity_mismatch": 502,
        "no_healthy_upstream": 503,
        "upstream_overflow": 503,
        "upstream_timeout": 504,
    }
)


class MeshdError(Exception):
    """Base class of the data plane's own errors."""


class SnapshotRejected(MeshdError):
    """A snapshot failed validation; the one in service stays."""


class ProxyError(MeshdError):
    """The proxy answers a request itself: ``reason`` (a key of :data:`PROXY_ERRORS`) and the
    status that table gives it."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.status = PROXY_ERRORS[reason]


class UpstreamError(ProxyError):
    """Talking to an upstream failed; ``reason`` goes into ``x-meshd-error``."""

    #: The endpoint (a ``meshcore.model.Endpoint``) the failure happened with, when known:
    #: set by the cluster on a failed connect, so the request path can report it and retry
    #: elsewhere.
    endpoint: object = None


class UpstreamConnectError(UpstreamError):
    """No connection to the upstream could be opened."""


class UpstreamResetError(UpstreamError):
    """The upstream closed or reset the connection before the response was complete."""


class UpstreamTlsError(UpstreamError):
    """mTLS to the upstream failed: handshake (``upstream_tls_failed``) or wrong peer identity
    (``upstream_identity_mismatch``)."""


class NoHealthyUpstream(UpstreamError):
    """The cluster has no endpoint to send to."""


class PoolOverflow(UpstreamError):
    """The cluster's connection limit is reached."""
