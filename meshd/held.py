"""A box that can be weakly referenced, for registries holding instances of compiled classes.

The instances of a class mypyc compiles (pyproject's ``mypyc-modules``) can't be weakly
referenced. A registry that must forget an object once nothing uses it keeps a :class:`Held`
box of it in a ``weakref.WeakValueDictionary`` instead, and every user keeps the box (not only
the object): the entry goes when the last user does. This module stays out of
``mypyc-modules``: a class compiled there could not be weakly referenced itself.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["Held"]

T = TypeVar("T")


class Held(Generic[T]):
    """``value``, in an object that can be weakly referenced."""

    __slots__ = ("__weakref__", "value")

    def __init__(self, value: T) -> None:
        self.value = value
