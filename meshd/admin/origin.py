"""Who may change the sidecar's state through the admin API: local tools, never a web page.

The admin API listens on 127.0.0.1 by default, which keeps other hosts out but not a browser
on the same host: any page it visits can send a form POST (``application/x-www-form-urlencoded``,
``multipart/form-data`` or ``text/plain``) to ``http://127.0.0.1:15000/drain`` without asking.
A state-changing request is therefore accepted only when

* its ``Content-Type`` is ``application/json``: a page can send that cross-origin only after a
  CORS preflight, which the admin API never grants (it sends no CORS headers at all);
* it carries no ``Origin`` other than the admin API's own, and no ``Sec-Fetch-Site`` other than
  ``same-origin`` or ``none`` (browsers send these; curl and meshd's tools don't);
* its ``Host`` is an IP address or ``localhost``: a page whose own name was made to resolve to
  127.0.0.1 (DNS rebinding) is same-origin with the admin API, but its requests carry that name.

:func:`refusal` is pure: headers in, the reason for a refusal (or None) out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Final

__all__ = ["refusal"]

_FETCH_SITES_OK: Final = frozenset({"same-origin", "none"})


def _host_name(host: str) -> str:
    """``host`` without its port (IPv6 literals keep no brackets)."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _local_host(host: str) -> bool:
    name = _host_name(host.strip().lower())
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def refusal(headers: Mapping[str, str]) -> tuple[int, str] | None:
    """``(status, reason)`` if a state-changing request with ``headers`` must be refused.

    ``headers`` is keyed by lower-case name (as Starlette's ``Headers``).
    """
    host = headers.get("host", "")
    if not _local_host(host):
        return 403, f"Host {host!r} is not an IP address or localhost"
    origin = headers.get("origin")
    if origin is not None and origin.lower() != f"http://{host.lower()}":
        return 403, f"cross-origin request from {origin!r}"
    site = headers.get("sec-fetch-site")
    if site is not None and site.lower() not in _FETCH_SITES_OK:
        return 403, f"cross-site request (Sec-Fetch-Site: {site})"
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        return 415, "state-changing requests need Content-Type: application/json"
    return None
