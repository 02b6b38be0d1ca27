"""The common HTTP/1.1 head, parsed without llhttp's per-field callbacks.

httptools calls back into Python for the start of a message, every header field, the end of the
head, the body and the end of the message: on a small proxied request and response those calls
cost more than the parse itself. Most heads a sidecar sees are of one plain shape, so the parsers
of :mod:`meshd.http.codec` first try this one pass over a head that came whole in one read:

* a request: ``GET``, ``HEAD``, ``POST``, ``PUT``, ``DELETE``, ``OPTIONS`` or ``PATCH`` with an
  origin-form target of RFC 3986 path and query characters, ``HTTP/1.1``, a valid ``Host``, no
  body (no ``Content-Length`` but ``0``), no ``Transfer-Encoding``, ``Expect``, ``Upgrade`` or
  ``Proxy-Connection``, and not the last on its connection (no ``Connection: close``);
* a response: ``HTTP/1.1``, a status of 200 or more with a reason phrase, no
  ``Transfer-Encoding``, ``Upgrade`` or ``Proxy-Connection``, and the whole body a
  ``Content-Length`` announces (or none: 204, 304, the answer to HEAD) in the same read;
* every field ``token ":" OWS value``, with no whitespace after the value, and every byte of the
  head a visible character, a space, a tab, obs-text, or part of a CRLF that ends a line.

That is a strict subset of what llhttp accepts, read the way llhttp reads it (the test suite
checks the two agree on generated heads). Anything else (a head in pieces, chunked framing, a
body still to come, obs-fold, a bare CR or LF, a control character, an unusual method or
target, over the limits) gets ``None``, and llhttp parses the same bytes from the start, with
every check and error it has: a head this pass refuses is never refused for that, only handed on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from meshd.http.heads import (
    CONNECTION_OPTIONS,
    LENGTH,
    NO_BODY,
    SPECIAL,
    SPECIAL_RESPONSE,
    MessageHead,
    RequestHead,
    ResponseHead,
)
from meshd.http.lookups import LOWER, decimal
from meshd.http.strict import MESH_HEADER_PREFIX, valid_host

if TYPE_CHECKING:
    # Native 64-bit integers for the byte loops' indices when compiled (mypyc's tagged ints
    # cost a checked add and an unboxing per byte read); plain ints when interpreted.
    from mypy_extensions import i64

__all__ = ["request_head", "response_fields", "response_head"]

_CR: Final = 13
_LF: Final = 10
_COLON: Final = 58
_SPACE: Final = 32
_TAB: Final = 9
_SLASH: Final = 47

_TOKEN_BYTES: Final = (
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
#: RFC 3986 pchar, "/" and "?": what an origin-form target is made of here (no "#", no space).
_TARGET_BYTES: Final = (
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%!$&'()*+,;=:@/?"
)
# Tables indexed by a byte (1: it belongs), read in compiled loops: a generic bytes method
# (find, translate with deletions) costs 1-2 thousand instructions a call under mypyc, a byte
# read here a handful.
#: A token's bytes (RFC 9110 tchar).
_TOKEN: Final = bytes([1 if b in _TOKEN_BYTES else 0 for b in range(256)])
#: An origin-form target's bytes.
_TARGET: Final = bytes([1 if b in _TARGET_BYTES else 0 for b in range(256)])
#: A field value's or reason phrase's bytes: HTAB, SP, VCHAR, obs-text (no CTL, no DEL).
_TEXT: Final = bytes([1 if b == _TAB or 0x20 <= b != 0x7F else 0 for b in range(256)])

_METHODS: Final = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"})
#: Special fields after which a request goes to llhttp (a body, an upgrade, an expectation).
_REQUEST_ELSEWHERE: Final = frozenset(
    {b"transfer-encoding", b"expect", b"upgrade", b"proxy-connection"}
)
#: Special fields after which a response goes to llhttp.
_RESPONSE_ELSEWHERE: Final = frozenset({b"transfer-encoding", b"upgrade", b"proxy-connection"})
#: 1 at the lengths of the special response fields' names (a table read, not a set lookup).
_SPECIAL_LENGTH: Final = bytes(
    [1 if any(len(f) == k for f in SPECIAL_RESPONSE) else 0 for k in range(32)]
)
#: Longest Content-Length taken here (llhttp checks the ones that might overflow).
_MAX_LENGTH_DIGITS: Final = 15


def request_head(data: bytes, max_head: int, max_headers: int) -> tuple[RequestHead, int] | None:
    """The head of the request at the start of ``data`` and where it ends, or None (llhttp's)."""
    n: i64 = len(data)
    i: i64 = 0
    while i < n and _TOKEN[data[i]]:
        i += 1
    method = data[:i]
    if method not in _METHODS or i + 2 >= n or data[i] != _SPACE or data[i + 1] != _SLASH:
        return None
    start: i64 = i + 1
    j: i64 = start
    while j < n and _TARGET[data[j]]:
        j += 1
    if data[j : j + 11] != b" HTTP/1.1\r\n":
        return None
    head = RequestHead()
    head.method = method
    head.target = data[start:j]
    end = _fields(data, j + 11, head, max_head, max_headers, request=True)
    if end < 0:
        return None
    host = head.host
    if host is None or not valid_host(host):
        return None  # llhttp's path answers it
    tokens = head.connection_tokens
    if tokens:
        if b"close" in tokens or b"upgrade" in tokens:
            return None
        if _named(tokens):
            head._drop_connection_options()
    return head, end


def response_head(
    data: bytes, head_request: bool, max_head: int, max_headers: int, *, as_sent: bool = False
) -> tuple[ResponseHead, int] | None:
    """The response at the start of ``data``, head and whole body: the head and where the body
    ends (the body is ``data[end - content_length:end]``), or None (llhttp's).

    ``as_sent``: the response is to be relayed as it came (less one hop-by-hop line): its
    fields to forward are checked, not kept (``headers`` stays empty; :func:`response_fields`
    reads them if that changes), and a head that needs more than that line cut is llhttp's.
    """
    n: i64 = len(data)
    if n < 16 or not data.startswith(b"HTTP/1.1 "):
        return None
    status = 0
    for k in range(9, 12):
        digit = data[k] - 48
        if not 0 <= digit <= 9:
            return None
        status = status * 10 + digit
    if status < 200 or data[12] != _SPACE:
        return None
    eol: i64 = 13
    while eol < n and _TEXT[data[eol]]:
        eol += 1
    if eol + 1 >= n or data[eol] != _CR or data[eol + 1] != _LF:
        return None
    head = ResponseHead()
    head.status = status
    head.reason = data[13:eol]
    end = _fields(data, eol + 2, head, max_head, max_headers, request=False, keep=not as_sent)
    if end < 0 or (as_sent and head.hop_fields):
        return None
    tokens = head.connection_tokens
    length = head.content_length
    empty = status in {204, 304}  # no body whatever the head says
    # llhttp's should_keep_alive(): no "close", and a body that doesn't run until the close.
    head.keep_alive = b"close" not in tokens and (length >= 0 or empty)
    if tokens and _named(tokens):
        if as_sent:
            return None
        head._drop_connection_options()
        head.hop_fields = True
    if empty or head_request:
        head.framing = NO_BODY
    elif length < 0:
        return None  # until the upstream closes
    else:
        head.framing = LENGTH
        end += length
        if end > n:
            return None  # more to come: llhttp counts it in
    return head, end


def response_fields(whole: bytes) -> list[tuple[bytes, bytes]]:
    """The fields to forward of a response :func:`response_head` took ``as_sent``."""
    got = response_head(whole, True, len(whole), len(whole))
    assert got is not None  # taken before, and the one hop-by-hop line is gone
    return got[0].headers


def _fields(
    data: bytes,
    pos: i64,
    head: MessageHead,
    max_head: i64,
    max_headers: i64,
    *,
    request: bool,
    keep: bool = True,
) -> i64:
    """Read the field lines from ``pos`` to the empty line into ``head`` as the parsers'
    ``on_header`` callbacks do; the end of the head, or -1 where llhttp must parse it.
    ``keep``: False, a response's fields to forward are only checked (``as_sent``)."""
    n: i64 = len(data)
    count: i64 = 0
    while True:
        if pos + 1 < n and data[pos] == _CR:
            if data[pos + 1] != _LF:
                return -1
            end = pos + 2
            if end > max_head:
                return -1
            return end
        line: i64 = pos
        i: i64 = pos
        while i < n and _TOKEN[data[i]]:
            i += 1
        if i == pos or i >= n or data[i] != _COLON:
            return -1
        name_end: i64 = i
        i += 1
        while i < n and (data[i] == _SPACE or data[i] == _TAB):
            i += 1
        start: i64 = i
        while i < n and _TEXT[data[i]]:
            i += 1
        if i + 1 >= n or data[i] != _CR or data[i + 1] != _LF:
            return -1
        if i > start and (data[i - 1] == _SPACE or data[i - 1] == _TAB):
            return -1  # whitespace after the value: llhttp's reading of it is not ours to guess
        pos = i + 2
        count += 1
        if count > max_headers or pos > max_head:
            return -1
        if not keep and not _SPECIAL_LENGTH[name_end - line if name_end - line < 32 else 31]:
            continue  # no special field has a name this long: forwarded as it came
        name = data[line:name_end]
        value = data[start:i]
        lname = name.translate(LOWER)
        # The commonest names first, compared (a set lookup hashes the new bytes each time).
        if request:
            if lname == b"host":  # not special, not a mesh header
                if isinstance(head, RequestHead):
                    if head.host is not None:
                        return -1
                    head.host = value
            elif lname in SPECIAL:
                if lname in _REQUEST_ELSEWHERE:
                    return -1
                if lname == b"content-length":
                    if head.content_length >= 0 or not _zero(value):
                        return -1
                    head.content_length = 0
                else:
                    head._special(lname, value)
                continue
            elif lname.startswith(MESH_HEADER_PREFIX):
                continue  # only the mesh sets these (RequestParser.on_header)
        elif lname == b"content-length":
            if head.content_length >= 0 or not _digits(value):
                return -1
            head.content_length = decimal(value)
            continue
        elif lname in SPECIAL_RESPONSE:
            if lname in _RESPONSE_ELSEWHERE:
                return -1
            head._special(lname, value)
            if isinstance(head, ResponseHead):
                if head.cut_to:
                    head.hop_fields = True  # a second one
                head.cut_from, head.cut_to = line, pos
            continue
        if keep:
            head.headers.append((name, value))


def _named(tokens: tuple[bytes, ...]) -> bool:
    """Whether ``Connection`` names a header (``not CONNECTION_OPTIONS.issuperset(tokens)``,
    without the generic method call)."""
    return any(token not in CONNECTION_OPTIONS for token in tokens)


def _digits(value: bytes) -> bool:
    """A Content-Length this pass takes: 1 to 15 ASCII digits."""
    n = len(value)
    if not 0 < n <= _MAX_LENGTH_DIGITS:
        return False
    for k in range(n):
        digit = value[k] - 48
        if not 0 <= digit <= 9:
            return False
    return True


def _zero(value: bytes) -> bool:
    """A request's Content-Length of zero (one or more "0")."""
    return _digits(value) and decimal(value) == 0
