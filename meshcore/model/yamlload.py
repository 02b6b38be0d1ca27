"""YAML from files an operator or an attacker may write, parsed within bounds.

Every YAML reader of the project (bootstrap and snapshot files, policy resources, ``meshctl
apply``/``diff``) parses through :func:`load_yaml` or :func:`load_yaml_all`, which use
:class:`StrictLoader`, a :class:`yaml.SafeLoader` that refuses:

* a **duplicate mapping key** (``timeout: 1`` then ``timeout: 5``): PyYAML keeps the last one
  silently, so a typo could override a setting unseen. Keys brought in by a ``<<`` merge may
  still be overridden, as YAML intends;
* nesting deeper than ``max_depth`` (default 64): PyYAML's composer recurses once per level, so
  a few hundred ``[`` raise :class:`RecursionError`; the depth is counted before recursing;
* a text longer than ``max_bytes`` (default 4 MiB), checked before parsing;
* **alias bombs**: anchors and aliases stay allowed (configs use them to repeat a block), but
  the nodes that aliases expand to are counted per document and refused past
  ``max_alias_nodes`` (default 10,000), and an alias inside its own anchor is refused. A
  "billion laughs" document is a few hundred bytes that expands to gigabytes once a consumer
  walks it (validation, JSON encoding): it stops at the limit.

Every failure is a :class:`YamlError` (a :class:`~meshcore.errors.ConfigError`) whose message
names the source, the line and column (1-based) and the problem, e.g.
``policy.yaml:4:3: invalid YAML: duplicate key 'timeout' (first at line 2)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from meshcore.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_ALIAS_NODES",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "StrictLoader",
    "YamlError",
    "load_yaml",
    "load_yaml_all",
]

#: Largest YAML text accepted by default (4 MiB); configuration files are far smaller.
DEFAULT_MAX_BYTES: Final = 4 << 20
#: Deepest nesting of sequences and mappings accepted by default.
DEFAULT_MAX_DEPTH: Final = 64
#: Most nodes all aliases of one document may expand to, by default.
DEFAULT_MAX_ALIAS_NODES: Final = 10_000

_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


class YamlError(ConfigError):
    """The text is not YAML, or breaks one of the loader's rules; ``str()`` says where.

    ``str()`` is ``source:line:column: invalid YAML: problem``; ``line`` and ``column`` are
    1-based, or None when the problem has no position (size, undecodable bytes).
    """

    def __init__(self, source: str, problem: str, line: int | None, column: int | None):
        self.source = source
        self.problem = problem
        self.line = line
        self.column = column
        where = source if line is None else f"{source}:{line}:{column}"
        super().__init__(f"{where}: invalid YAML: {problem}")


class _Refused(yaml.MarkedYAMLError):
    """A rule of :class:`StrictLoader` was broken (turned into :class:`YamlError`)."""


class StrictLoader(yaml.SafeLoader):
    """A SafeLoader refusing duplicate keys, deep nesting and alias expansion bombs."""

    max_depth: int = DEFAULT_MAX_DEPTH
    max_alias_nodes: int = DEFAULT_MAX_ALIAS_NODES

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self._depth = 0
        # Nodes composed so far in this document (aliases counted by what they expand to),
        # and the count at the start and end of each anchored node: its expanded size.
        self._nodes = 0
        self._alias_nodes = 0
        self._anchor_start: dict[str, int] = {}
        self._anchor_size: dict[str, int] = {}

    def compose_document(self) -> Node | None:
        self._nodes = self._alias_nodes = 0
        self._anchor_start.clear()
        self._anchor_size.clear()
        node: Node | None = super().compose_document()
        return node

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            if event.anchor in self._anchor_start and event.anchor not in self._anchor_size:
                raise _Refused(
                    None, None, f"alias *{event.anchor} refers to its own anchor", event.start_mark
                )
            size = self._anchor_size.get(event.anchor, 0)
            self._alias_nodes += size
            self._nodes += size
            if self._alias_nodes > self.max_alias_nodes:
                raise _Refused(
                    None,
                    None,
                    f"aliases expand to more than {self.max_alias_nodes} nodes",
                    event.start_mark,
                )
            return super().compose_node(parent, index)
        event = self.peek_event()  # type: ignore[no-untyped-call]
        collection = isinstance(event, yaml.CollectionStartEvent)
        if collection:
            self._depth += 1
            if self._depth > self.max_depth:
                raise _Refused(
                    None,
                    None,
                    f"nested deeper than {self.max_depth} levels",
                    event.start_mark,
                )
        anchor = getattr(event, "anchor", None)
        start = self._nodes
        self._nodes += 1
        if anchor is not None:
            self._anchor_start[anchor] = start
            self._anchor_size.pop(anchor, None)
        try:
            node: Node | None = super().compose_node(parent, index)
        finally:
            if collection:
                self._depth -= 1
        if anchor is not None:
            self._anchor_size[anchor] = self._nodes - start
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            self._refuse_duplicates(node)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping

    def _refuse_duplicates(self, node: MappingNode) -> None:
        # Only the keys written in this mapping: merged (``<<``) keys may be overridden.
        first: dict[Any, Node] = {}
        for key_node, _value in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node)
            try:
                seen = first.setdefault(key, key_node)
            except TypeError:
                continue  # unhashable: SafeConstructor reports it
            if seen is not key_node:
                raise _Refused(
                    None,
                    None,
                    f"duplicate key {key_node.value!r} (first at line {seen.start_mark.line + 1})",
                    key_node.start_mark,
                )

    def construct_yaml_timestamp(self, node: ScalarNode) -> Any:
        # ``2024-13-45`` matches the timestamp pattern; datetime then raises ValueError.
        try:
            return super().construct_yaml_timestamp(node)
        except (ValueError, OverflowError) as exc:
            raise _Refused(None, None, f"invalid timestamp: {exc}", node.start_mark) from exc


StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", StrictLoader.construct_yaml_timestamp)


def _error(source: str, exc: yaml.YAMLError) -> YamlError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "not YAML"
        if mark is not None:
            return YamlError(source, problem, mark.line + 1, mark.column + 1)
        return YamlError(source, problem, None, None)
    if isinstance(exc, yaml.reader.ReaderError):
        # Bytes that aren't text in the encoding detected.
        return YamlError(source, str(exc.reason), None, None)
    return YamlError(source, str(exc), None, None)


def _check_size(source: str, text: str | bytes, max_bytes: int) -> None:
    size = len(text)
    # A str's length in characters bounds its UTF-8 size from below; encode only when close.
    if isinstance(text, str) and max_bytes < size * 4 and size <= max_bytes:
        size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise YamlError(source, f"larger than {max_bytes} bytes", None, None)


def _loader(text: str | bytes, max_depth: int, max_alias_nodes: int) -> StrictLoader:
    loader = StrictLoader(text)
    loader.max_depth = max_depth
    loader.max_alias_nodes = max_alias_nodes
    return loader


def load_yaml_all(
    text: str | bytes,
    source: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_alias_nodes: int = DEFAULT_MAX_ALIAS_NODES,
) -> Iterator[Any]:
    """Each document of a multi-document YAML text, in order (empty ones as None).

    Raises :class:`YamlError` naming ``source``, line and column, when the document being read
    is invalid; documents before it have already been yielded.
    """
    _check_size(source, text, max_bytes)
    try:
        loader = _loader(text, max_depth, max_alias_nodes)
    except yaml.YAMLError as exc:
        raise _error(source, exc) from exc
    try:
        while True:
            try:
                if not loader.check_data():  # type: ignore[no-untyped-call]
                    return
                data = loader.get_data()
            except yaml.YAMLError as exc:
                raise _error(source, exc) from exc
            yield data
    finally:
        loader.dispose()


def load_yaml(
    text: str | bytes,
    source: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_alias_nodes: int = DEFAULT_MAX_ALIAS_NODES,
) -> Any:
    """The single document of ``text`` (None if empty); raises :class:`YamlError`.

    More than one document is an error, as with :func:`yaml.safe_load`.
    """
    _check_size(source, text, max_bytes)
    try:
        loader = _loader(text, max_depth, max_alias_nodes)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise _error(source, exc) from exc
