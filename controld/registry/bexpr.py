"""Consul's ``?filter=`` expressions (go-bexpr), evaluated against the JSON shape of each result.

Grammar: ``or``/``and``/``not``/parentheses over matches:
``Sel == V``, ``Sel != V``, ``V in Sel``, ``V not in Sel``, ``Sel contains V``,
``Sel not contains V``, ``Sel is empty``, ``Sel is not empty``, ``Sel matches "re"``,
``Sel not matches "re"``. Selectors are dotted JSON field names (``Service.Tags``,
``Meta.env``, ``Meta["env"]``); values are ``"strings"``, `` `raw strings` ``, numbers,
booleans or bare words.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from controld.registry.errors import BadRequest

__all__ = ["compile_filter"]

Predicate = Callable[[Any], bool]

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*")
      | (?P<raw>`[^`]*`)
      | (?P<op>==|!=|\(|\)|\[|\])
      | (?P<dot>\.)
      | (?P<word>[A-Za-z0-9_\-:/+@]+)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "contains", "is", "empty", "matches"}


class _Tokens:
    def __init__(self, text: str) -> None:
        self.items: list[tuple[str, str]] = []
        pos = 0
        text = text.rstrip()
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None or match.end() == pos:
                raise BadRequest(
                    f"Failed to create boolean expression evaluator: syntax error at {pos}"
                )
            kind = match.lastgroup or ""
            self.items.append((kind, match.group(kind)))
            pos = match.end()
        self.pos = 0

    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        i = self.pos + offset
        return self.items[i] if i < len(self.items) else None

    def next(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise BadRequest("Failed to create boolean expression evaluator: unexpected end")
        self.pos += 1
        return tok

    def accept_word(self, word: str) -> bool:
        tok = self.peek()
        if tok is not None and tok[0] == "word" and tok[1] == word:
            self.pos += 1
            return True
        return False


def _unquote(kind: str, text: str) -> str:
    if kind == "str":
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    if kind == "raw":
        return text[1:-1]
    return text


def _lookup(obj: Any, path: list[str]) -> Any:
    for part in path:
        if isinstance(obj, dict):
            if part not in obj:
                return None
            obj = obj[part]
        else:
            return None
    return obj


def _coerce(field: Any, value: str) -> Any:
    if isinstance(field, bool):
        return value.lower() == "true"
    if isinstance(field, int):
        try:
            return int(value)
        except ValueError:
            return value
    return value


def _contains(container: Any, value: str) -> bool:
    if isinstance(container, list):
        return any(str(x) == value for x in container)
    if isinstance(container, dict):
        return value in container
    if isinstance(container, str):
        return value in container
    return False


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _Tokens(text)

    def parse(self) -> Predicate:
        pred = self._or()
        if self.toks.peek() is not None:
            raise BadRequest(
                f"Failed to create boolean expression evaluator: unexpected {self.toks.peek()[1]!r}"  # type: ignore[index]
            )
        return pred

    def _or(self) -> Predicate:
        left = self._and()
        while self.toks.accept_word("or"):
            right = self._and()
            left = _either(left, right)
        return left

    def _and(self) -> Predicate:
        left = self._not()
        while self.toks.accept_word("and"):
            right = self._not()
            left = _both(left, right)
        return left

    def _not(self) -> Predicate:
        if self.toks.accept_word("not"):
            inner = self._not()
            return lambda o: not inner(o)
        tok = self.toks.peek()
        if tok is not None and tok == ("op", "("):
            self.toks.next()
            inner = self._or()
            if self.toks.next() != ("op", ")"):
                raise BadRequest("Failed to create boolean expression evaluator: missing ')'")
            return inner
        return self._match()

    def _selector(self) -> list[str]:
        kind, text = self.toks.next()
        if kind != "word" or text in _KEYWORDS:
            raise BadRequest(
                f"Failed to create boolean expression evaluator: bad selector {text!r}"
            )
        path = [text]
        while True:
            tok = self.toks.peek()
            if tok == ("dot", "."):
                self.toks.next()
                kind, text = self.toks.next()
                path.append(_unquote(kind, text))
            elif tok == ("op", "["):
                self.toks.next()
                kind, text = self.toks.next()
                path.append(_unquote(kind, text))
                if self.toks.next() != ("op", "]"):
                    raise BadRequest("Failed to create boolean expression evaluator: missing ']'")
            else:
                return path

    def _value(self) -> str:
        kind, text = self.toks.next()
        if kind not in ("str", "raw", "word") or (kind == "word" and text in _KEYWORDS):
            raise BadRequest(f"Failed to create boolean expression evaluator: bad value {text!r}")
        return _unquote(kind, text)

    def _match(self) -> Predicate:
        tok = self.toks.peek()
        after = self.toks.peek(1)
        # "value in Selector" / "value not in Selector"
        if tok is not None and (
            tok[0] in ("str", "raw")
            or (
                after is not None
                and after[0] == "word"
                and after[1] in ("in", "not")
                and tok[0] == "word"
                and self._is_in_form()
            )
        ):
            value = self._value()
            negate = self.toks.accept_word("not")
            if not self.toks.accept_word("in"):
                raise BadRequest("Failed to create boolean expression evaluator: expected 'in'")
            path = self._selector()
            return lambda o: _contains(_lookup(o, path), value) != negate
        path = self._selector()
        kind, text = self.toks.next()
        if (kind, text) == ("op", "=="):
            value = self._value()
            return lambda o: _equal(_lookup(o, path), value)
        if (kind, text) == ("op", "!="):
            value = self._value()
            return lambda o: not _equal(_lookup(o, path), value)
        negate = False
        if (kind, text) == ("word", "not"):
            negate = True
            kind, text = self.toks.next()
        if (kind, text) == ("word", "contains"):
            value = self._value()
            return lambda o: _contains(_lookup(o, path), value) != negate
        if (kind, text) == ("word", "matches"):
            pattern = self._value()
            try:
                rx = re.compile(pattern)
            except re.error as exc:
                raise BadRequest(f"Failed to create boolean expression evaluator: {exc}") from exc
            return lambda o: bool(rx.search(str(_lookup(o, path) or ""))) != negate
        if (kind, text) == ("word", "is") and not negate:
            neg = self.toks.accept_word("not")
            if not self.toks.accept_word("empty"):
                raise BadRequest("Failed to create boolean expression evaluator: expected 'empty'")
            return lambda o: (not _lookup(o, path)) != neg
        raise BadRequest(f"Failed to create boolean expression evaluator: unexpected {text!r}")

    def _is_in_form(self) -> bool:
        after = self.toks.peek(1)
        if after is None:
            return False
        if after[1] == "in":
            return True
        after2 = self.toks.peek(2)
        return after[1] == "not" and after2 is not None and after2[1] == "in"


def _either(a: Predicate, b: Predicate) -> Predicate:
    return lambda o: a(o) or b(o)


def _both(a: Predicate, b: Predicate) -> Predicate:
    return lambda o: a(o) and b(o)


def _equal(field: Any, value: str) -> bool:
    if field is None:
        return value == ""
    return bool(field == _coerce(field, value))


def compile_filter(text: str) -> Predicate:
    """A predicate over one JSON result; raises :class:`BadRequest` for a malformed filter."""
    return _Parser(text).parse()
