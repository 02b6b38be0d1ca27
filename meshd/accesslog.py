"""The proxy's JSON access log: switchable, sampled, and free when disabled.

The hot path checks :attr:`AccessLog.enabled` before building any fields::

    if access_log.enabled:
        access_log.log(direction="outbound", listener=..., code=..., ...)

Standard field names (pass the ones that apply; TCP proxying has no HTTP fields):

``direction``     "inbound" or "outbound"
``listener``      listener name
``source``        calling service (outbound: this one; inbound: from the client's
                  SPIFFE ID, "unknown" without one)
``destination``   destination service
``route``         matched route name ("" when none matched)
``method``, ``path``, ``authority``  HTTP request line and ``:authority``/Host
``code``          response status sent downstream (int; 0 when none was sent)
``duration_ms``   request duration in milliseconds (float)
``bytes_in``, ``bytes_out``  body bytes received from / sent to downstream
``upstream``      endpoint address used ("" when none)
``request_id``    ``x-request-id``
``traceparent``   W3C ``traceparent`` as forwarded
``trace_id``, ``span_id``  its trace id and this proxy's span id ("" when not forwarded)
``error``         the ``x-meshd-error`` reason, or "" on success
``source_identity``  the client certificate's SPIFFE ID (inbound mTLS only)

Lines go to structlog's configured output with event ``"access"`` at level info.
"""

from __future__ import annotations

import random

import structlog
from structlog.typing import FilteringBoundLogger

__all__ = ["ACCESS_FIELDS", "AccessLog"]

ACCESS_FIELDS: tuple[str, ...] = (
    "direction",
    "listener",
    "source",
    "destination",
    "route",
    "method",
    "path",
    "authority",
    "code",
    "duration_ms",
    "bytes_in",
    "bytes_out",
    "upstream",
    "request_id",
    "traceparent",
    "error",
    "trace_id",
    "span_id",
)


class AccessLog:
    """Writes sampled access lines; errors (``code >= 500`` or a non-empty ``error``) always.

    ``sample_rate`` is the fraction of successful requests logged, from 0.0 to 1.0.
    """

    __slots__ = ("_logger", "_rng", "enabled", "sample_rate")

    def __init__(
        self,
        *,
        enabled: bool,
        sample_rate: float,
        logger: FilteringBoundLogger | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``logger`` defaults to ``structlog.get_logger("meshd.access")``."""
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be within [0, 1], got {sample_rate}")
        self.enabled = enabled
        self.sample_rate = sample_rate
        self._logger: FilteringBoundLogger = (
            logger if logger is not None else structlog.get_logger("meshd.access")
        )
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - sampling, not crypto

    def log(self, **fields: object) -> None:
        """Write one ``access`` line with ``fields`` if enabled and sampled (or an error)."""
        if not self.enabled:
            return
        if not (
            self.sample_rate >= 1.0 or _is_error(fields) or self._rng.random() < self.sample_rate
        ):
            return
        self._logger.info("access", **fields)


def _is_error(fields: dict[str, object]) -> bool:
    code = fields.get("code")
    return bool(fields.get("error")) or (isinstance(code, int) and code >= 500)
