"""Root of the errors raised by :mod:`meshcore`."""


class MeshError(Exception):
    """Base class of every error the mesh's own packages raise on purpose."""


class ConfigError(MeshError):
    """A configuration file or value is invalid; the message names the file, field and reason."""
