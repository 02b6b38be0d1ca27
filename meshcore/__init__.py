"""Shared vocabulary of the mesh: models, identities, wire format and runtime helpers."""

__version__ = "0.1.0"
