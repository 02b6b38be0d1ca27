"""JSON from untrusted places, decoded within bounds: size and nesting depth first, then parse.

Python's :func:`json.loads` recurses once per nesting level, so a value nested a few thousand
levels deep raises :class:`RecursionError` (or worse, in a thread with a small stack) instead
of a :class:`ValueError`. Every JSON value that comes from a peer, the registry or a file an
attacker may write goes through :func:`loads_bounded`, which checks the size and counts the
nesting before it lets the parser near the bytes.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "BoundedJsonError",
    "json_depth",
    "loads_bounded",
]

#: Largest value accepted by default (1 MiB).
DEFAULT_MAX_BYTES: Final = 1 << 20
#: Deepest nesting accepted by default; policy documents stay far below it.
DEFAULT_MAX_DEPTH: Final = 64

# Strings (with escapes) are removed before counting brackets, so brackets inside them don't
# count. The pattern is linear: no nested quantifiers.
_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET: Final = bytes(b for b in range(256) if b not in b"[]{}")


class BoundedJsonError(ValueError):
    """The value is too large, nested too deep or not JSON; the message says which."""


def json_depth(raw: bytes) -> int:
    """Deepest nesting of arrays and objects in ``raw`` (0 for a scalar)."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    depth = deepest = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def loads_bounded(
    raw: bytes | str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Any:
    """Decode ``raw`` as JSON, refusing more than ``max_bytes`` or ``max_depth`` levels.

    Raises :class:`BoundedJsonError` (a :class:`ValueError`) for every way the input can be
    bad: too large, too deep, not UTF-8, not JSON, a key twice in one object, or a lone
    surrogate in a string.
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if len(data) > max_bytes:
        raise BoundedJsonError(f"JSON value of {len(data)} bytes exceeds {max_bytes}")
    depth = json_depth(data)
    if depth > max_depth:
        raise BoundedJsonError(f"JSON value nested {depth} levels deep exceeds {max_depth}")
    try:
        text = data.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except BoundedJsonError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BoundedJsonError(f"not JSON: {exc}") from exc
    _refuse_surrogates(value)
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object with a key twice means what the parser that reads it says (the first, the
    last): refuse it rather than guess, as the YAML loader does."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BoundedJsonError(f"not JSON: duplicate key {key!r} in an object")
            seen.add(key)
    return obj


def _refuse_surrogates(value: Any) -> None:
    """``\\ud800`` escapes decode to lone surrogates that can't be encoded again: refuse them."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise BoundedJsonError("not JSON: a string holds a lone surrogate") from exc
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
