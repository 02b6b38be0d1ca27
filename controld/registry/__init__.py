"""Embedded Consul-compatible registry: the Consul HTTP API subset meshd and controld use.

See ``docs/registry.md``. Public surface: :class:`RegistryServer` and :class:`RegistryConfig`.
"""

from __future__ import annotations

from controld.registry.errors import DataDirError, RegistryError
from controld.registry.server import RegistryConfig, RegistryServer

__all__ = ["DataDirError", "RegistryConfig", "RegistryError", "RegistryServer"]
