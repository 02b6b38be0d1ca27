"""Client side of service discovery: a typed, Trio-friendly wrapper over py-consul.

:class:`meshcore.registry.client.RegistryClient` talks to any Consul-compatible registry
(controld's embedded one, or a real Consul agent); this package's top level holds the values it
sends and returns, its errors and the reconnect backoff. The client itself is imported from
``meshcore.registry.client`` explicitly: importing py-consul (and requests) costs a daemon
~150 ms of start-up, which only the processes that talk to a registry should pay.
"""

# The submodules' own ``__all__`` lists are the single statement of what this package exports.
from meshcore.registry import errors, model
from meshcore.registry.backoff import Backoff
from meshcore.registry.errors import *  # noqa: F403
from meshcore.registry.model import *  # noqa: F403

__all__ = ["Backoff"]
__all__ += errors.__all__
__all__ += model.__all__
