"""Wire models of controld's audit log (``meshctl audit``, the dashboard's Events view).

Path (admin listener, admin token): ``GET /v1/audit?since=<RFC 3339>&limit=N`` ->
:class:`AuditPage`, newest entries first.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import Field

from meshcore.api.base import Answer

__all__ = ["AUDIT_PATH", "DEFAULT_AUDIT_LIMIT", "MAX_AUDIT_LIMIT", "AuditEntry", "AuditPage"]

AUDIT_PATH = "/v1/audit"
#: Entries one call returns unless asked otherwise.
DEFAULT_AUDIT_LIMIT: Final = 100
#: Most entries one call returns.
MAX_AUDIT_LIMIT: Final = 1000


class AuditEntry(Answer):
    """One control-plane request that (tried to) change something."""

    #: When it was answered (RFC 3339, ms).
    time: str
    #: Which credential: ``admin``, ``sidecar:<service>``, a client certificate's SPIFFE ID,
    #: or ``anonymous``.
    actor: str
    method: str
    #: The route template (``/v1/resources/{kind}/{name}``), or the path when none matched.
    route: str
    path: str
    #: ``host:port`` of the client.
    source: str
    #: HTTP status of the answer.
    status: int
    #: What the endpoint said happened (``applied``, ``deleted``, ``minted``, ...).
    outcome: str
    #: ``Kind/name`` (or the path parameters) the request was about, where known.
    resource: str | None = None
    #: The revision a policy change made.
    revision: int | None = None
    #: What else the endpoint reported (service, namespace, changes, ...).
    details: dict[str, Any] = Field(default_factory=dict)


class AuditPage(Answer):
    """Answer of ``GET /v1/audit``."""

    entries: tuple[AuditEntry, ...]
