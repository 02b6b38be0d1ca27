"""controld's HTTP API: FastAPI on hypercorn's Trio worker, bearer-token auth, audit log.

* :func:`build_api` makes the app; the daemon serves it with
  :class:`~meshcore.runtime.asgi.AsgiServer`.
* :class:`ControlPlane`: what the daemon must hand it (push hub, store, view, resources,
  status).
"""

from controld.api.app import AUDIT_LOGGER, build_api
from controld.api.plane import ControlPlane, PushHubAPI, ResourceStoreAPI

__all__ = ["AUDIT_LOGGER", "ControlPlane", "PushHubAPI", "ResourceStoreAPI", "build_api"]
