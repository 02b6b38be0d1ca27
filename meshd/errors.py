"""Root of the errors raised by :mod:`meshd`."""


class MeshdError(Exception):
    """Base class of the data plane's own errors."""


class SnapshotRejected(MeshdError):
    """A snapshot failed validation; the one in service stays."""


class UpstreamError(MeshdError):
    """Talking to an upstream failed; ``reason`` goes into ``x-meshd-error``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


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
