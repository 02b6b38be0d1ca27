"""controld mode: compiled listeners carry the HTTP message limits' safe defaults."""

from __future__ import annotations

from compiler.builders import ep, proxy, rset, view
from controld.compiler import compile_snapshot


def test_compiled_listeners_get_the_message_limit_defaults() -> None:
    snap = compile_snapshot(view({"api": [ep("10.0.0.1")]}), rset(), proxy("web-1", "web", ["api"]))
    assert snap.listeners
    for listener in snap.listeners:
        assert listener.max_request_headers_kb == 60
        assert listener.max_request_header_count == 100
        assert listener.max_response_headers_kb == 60
        assert listener.max_response_header_count == 100
        assert listener.max_requests_per_connection == 1000
