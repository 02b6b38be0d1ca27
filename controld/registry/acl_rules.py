"""ACL rules of a policy: Consul's rule language (the HCL subset rules use, or its JSON form).

A policy's ``Rules`` text is either JSON (``{"key_prefix": {"": {"policy": "read"}}}``) or
HCL in the shapes Consul documents for rules::

    key_prefix "meshd/" { policy = "write" }   # a segmented resource
    operator = "read"                          # a resource without segments

Comments (``#``, ``//``, ``/* */``) and commas between attributes are accepted. Anything else
(another HCL construct, an unknown resource or attribute, a disposition a resource doesn't
take) is refused with :class:`RulesError` naming the line, never ignored: a rule the registry
can't enforce must not look granted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from meshcore.boundedjson import BoundedJsonError, loads_bounded

__all__ = [
    "DISPOSITIONS",
    "SEGMENTED",
    "UNSEGMENTED",
    "Rules",
    "RulesError",
    "merge_disposition",
    "parse_rules",
]

#: Resources taking a segment (a name, or a prefix for the ``_prefix`` forms).
SEGMENTED = frozenset(
    {
        "service",
        "service_prefix",
        "node",
        "node_prefix",
        "key",
        "key_prefix",
        "agent",
        "agent_prefix",
        "session",
        "session_prefix",
        "event",
        "event_prefix",
    }
)
#: Resources set with ``<resource> = "<disposition>"``.
UNSEGMENTED = frozenset({"acl", "operator", "keyring"})
DISPOSITIONS = ("deny", "read", "list", "write")
_MAX_RULES = 256 * 1024


class RulesError(ValueError):
    """The rules text is not in the supported language; the message names the line."""


@dataclass(frozen=True, slots=True)
class Rules:
    """Parsed rules: ``segments[resource][segment]`` and ``flat[resource]`` dispositions."""

    segments: dict[str, dict[str, str]] = field(default_factory=dict)
    flat: dict[str, str] = field(default_factory=dict)


# Consul merges rules of one resource and segment by this order (deny wins, then write...).
_RANK = {"read": 1, "list": 2, "write": 3, "deny": 4}


def merge_disposition(old: str | None, new: str) -> str:
    """The disposition of two rules of one resource and segment (deny > write > list > read)."""
    return new if old is None or _RANK[new] > _RANK[old] else old


def _check_disposition(resource: str, value: object, line: int) -> str:
    if not isinstance(value, str) or value not in DISPOSITIONS:
        raise RulesError(
            f"line {line}: {resource}: policy must be one of "
            f"{', '.join(repr(d) for d in DISPOSITIONS)}, got {value!r}"
        )
    if value == "list" and resource not in ("key", "key_prefix"):
        raise RulesError(f"line {line}: {resource}: 'list' applies only to key and key_prefix")
    return value


def _add(rules: Rules, resource: str, segment: str | None, value: object, line: int) -> None:
    if resource in SEGMENTED:
        if segment is None:
            raise RulesError(
                f'line {line}: {resource} needs a segment: {resource} "<name>" {{...}}'
            )
        disposition = _check_disposition(resource, value, line)
        by_segment = rules.segments.setdefault(resource, {})
        by_segment[segment] = merge_disposition(by_segment.get(segment), disposition)
    elif resource in UNSEGMENTED:
        if segment is not None:
            raise RulesError(f'line {line}: {resource} takes no segment: {resource} = "<policy>"')
        disposition = _check_disposition(resource, value, line)
        rules.flat[resource] = merge_disposition(rules.flat.get(resource), disposition)
    else:
        raise RulesError(f"line {line}: unknown or unsupported resource {resource!r}")


def parse_rules(text: str) -> Rules:
    """Parse a policy's rules (JSON when it starts with ``{``, else HCL); raises RulesError."""
    if len(text) > _MAX_RULES:
        raise RulesError(f"rules too long ({len(text)} characters, at most {_MAX_RULES})")
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return _parse_json(text)
    return _HclParser(text).parse()


def _parse_json(text: str) -> Rules:
    try:
        data = loads_bounded(text.encode(), max_bytes=_MAX_RULES, max_depth=8)
    except BoundedJsonError as exc:
        raise RulesError(f"line 1: rules are not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise RulesError("line 1: JSON rules must be an object")
    rules = Rules()
    for resource, value in data.items():
        line = _json_line(text, resource)
        if resource in SEGMENTED:
            if not isinstance(value, dict):
                raise RulesError(f"line {line}: {resource}: expected an object of segments")
            for segment, body in value.items():
                if not isinstance(body, dict) or set(body) != {"policy"}:
                    raise RulesError(
                        f'line {line}: {resource} {segment!r}: expected {{"policy": ...}} '
                        f"and nothing else, got {json.dumps(body)[:80]}"
                    )
                _add(rules, resource, segment, body["policy"], line)
        else:
            _add(rules, resource, None, value, line)
    return rules


def _json_line(text: str, key: str) -> int:
    pos = text.find(json.dumps(key))
    return text.count("\n", 0, pos) + 1 if pos >= 0 else 1


_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r]+)
    | (?P<nl>\n)
    | (?P<comment>\#[^\n]*|//[^\n]*|/\*.*?\*/)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_-]*)
    | (?P<string>"(?:[^"\\\n]|\\.)*")
    | (?P<punct>[{}=,])
    """,
    re.VERBOSE | re.DOTALL,
)


class _HclParser:
    """A recursive-descent parser of the two rule shapes, with line numbers."""

    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str, int]] = []
        line = 1
        pos = 0
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None:
                raise RulesError(f"line {line}: unexpected {text[pos : pos + 20]!r}")
            kind = match.lastgroup or ""
            value = match.group()
            if kind in ("ident", "string", "punct"):
                self.tokens.append((kind, value, line))
            line += value.count("\n")
            pos = match.end()
        self.pos = 0
        self.last_line = line

    def _next(self, expected: str) -> tuple[str, str, int]:
        if self.pos >= len(self.tokens):
            raise RulesError(f"line {self.last_line}: unexpected end of rules, expected {expected}")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def _expect(self, kind: str, value: str | None, expected: str) -> tuple[str, str, int]:
        token = self._next(expected)
        if token[0] != kind or (value is not None and token[1] != value):
            raise RulesError(f"line {token[2]}: expected {expected}, got {token[1]!r}")
        return token

    def _string(self, token: tuple[str, str, int]) -> str:
        try:
            value = json.loads(token[1])
        except ValueError as exc:
            raise RulesError(f"line {token[2]}: bad string {token[1]}: {exc}") from exc
        assert isinstance(value, str)
        return value

    def parse(self) -> Rules:
        rules = Rules()
        while self.pos < len(self.tokens):
            _, resource, line = self._expect("ident", None, "a resource name")
            token = self._next("'=' or a segment string")
            if token[:2] == ("punct", "="):
                value = self._string(self._expect("string", None, "a quoted policy"))
                _add(rules, resource, None, value, line)
            elif token[0] == "string":
                segment = self._string(token)
                _add(rules, resource, segment, self._block(resource), line)
            else:
                raise RulesError(
                    f"line {token[2]}: expected '=' or a quoted segment after {resource}, "
                    f"got {token[1]!r}"
                )
        return rules

    def _block(self, resource: str) -> str:
        self._expect("punct", "{", "'{'")
        policy: str | None = None
        while True:
            token = self._next("'policy' or '}'")
            if token[:2] == ("punct", "}"):
                break
            if token[:2] == ("punct", ","):
                continue
            if token[0] != "ident":
                raise RulesError(f"line {token[2]}: expected an attribute, got {token[1]!r}")
            if token[1] != "policy":
                raise RulesError(
                    f"line {token[2]}: {resource}: unsupported attribute {token[1]!r} "
                    "(only 'policy' is enforced here)"
                )
            if policy is not None:
                raise RulesError(f"line {token[2]}: {resource}: 'policy' set twice")
            self._expect("punct", "=", "'='")
            policy = self._string(self._expect("string", None, "a quoted policy"))
            _check_disposition(resource, policy, token[2])
        if policy is None:
            raise RulesError(f"line {self.tokens[self.pos - 1][2]}: {resource}: no policy set")
        return policy
