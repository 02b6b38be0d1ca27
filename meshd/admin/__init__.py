"""The sidecar's local admin API: health, config and stats introspection, metrics, drain."""

from meshd.admin.app import AdminBackend, build_admin_app
from meshd.admin.server import AdminBindError, AdminServer

__all__ = ["AdminBackend", "AdminBindError", "AdminServer", "build_admin_app"]
