"""controld client: answers become values, errors become ApiError/Unreachable."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from meshcore.api.errors import Problem
from meshcore.api.resources import ResourceList
from tui.cli import main
from tui.client import ApiError, ControldClient, UnexpectedAnswer, Unreachable


def _client(handler: httpx.MockTransport) -> ControldClient:
    return ControldClient("http://controld.test", "secret", transport=handler)


def test_sends_bearer_token_and_decodes_json() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"revision": 1, "resources": []})

    with _client(httpx.MockTransport(handle)) as client:
        assert client.list_resources("HTTPRoute") == ResourceList(revision=1, resources=())
    assert seen[0].headers["authorization"] == "Bearer secret"
    assert seen[0].url.params["kind"] == "HTTPRoute"


def test_problems_of_a_422() -> None:
    problem = {"document": 0, "kind": "Mesh", "name": "x", "path": "metadata.name", "message": "m"}

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"error": "invalid resources", "problems": [problem]})

    with _client(httpx.MockTransport(handle)) as client, pytest.raises(ApiError) as info:
        client.apply([{"kind": "Mesh"}])
    assert info.value.status == 422
    assert info.value.message == "invalid resources"
    assert info.value.problems == (Problem.model_validate(problem),)


def test_error_without_json_body_and_401_hint() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/status":
            return httpx.Response(502, text="bad gateway\nmore")
        return httpx.Response(401, json={"error": "missing token"})

    with _client(httpx.MockTransport(handle)) as client:
        with pytest.raises(ApiError, match=r"502: bad gateway$"):
            client.status()
        with pytest.raises(ApiError, match=r"missing token .*--token"):
            client.proxies()


def _odd_answers(request: httpx.Request) -> httpx.Response:
    """A server whose success answers don't have the API's shape."""
    if request.url.path == "/v1/explain":
        return httpx.Response(200, json=["not", "an", "object"])
    if request.url.path == "/v1/schema":
        return httpx.Response(200, text="<html>a login page</html>")
    return httpx.Response(200, json={"proxies": [{"proxy_id": "p"}]})


def test_an_answer_of_another_shape_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with _client(httpx.MockTransport(_odd_answers)) as client:
        with pytest.raises(UnexpectedAnswer, match=r"/v1/proxies: proxies\.0\.service: Field"):
            client.proxies()
        with pytest.raises(UnexpectedAnswer, match="/v1/explain: Input should be a valid dict"):
            client.explain("web", "api")
        with pytest.raises(UnexpectedAnswer, match="/v1/schema: not JSON"):
            client.schema()
    # meshctl says so in one line and exits 1 (no traceback).
    monkeypatch.setattr(
        "tui.cli.common.ControldClient",
        lambda server, token: ControldClient(
            server, token, transport=httpx.MockTransport(_odd_answers)
        ),
    )
    assert main(["--server", "http://controld.test", "--token", "t", "token", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("meshctl: unexpected answer from controld to /v1/tokens/sidecar")
    assert "Traceback" not in err
    server = ["--server", "http://controld.test", "--token", "t"]
    assert main([*server, "explain", "web", "api", "-o", "json"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("meshctl: unexpected answer from controld to /v1/explain: ")
    assert len(err.splitlines()) == 1


def test_no_content() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(204)

    with _client(httpx.MockTransport(handle)) as client:
        assert client.request("POST", "/v1/x") is None


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_names_the_url() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    with ControldClient(url) as client, pytest.raises(Unreachable, match=url):
        client.status()


def test_exit_codes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    token = ["--token", "t"]
    assert main(["--server", url, *token, "status"]) == 3
    assert f"cannot reach controld at {url}" in capsys.readouterr().err
    assert main(["get", "widgets", "--server", url, *token]) == 2
    assert "unknown kind 'widgets'" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert main(["--version"]) == 0
    capsys.readouterr()
    assert main(["explain", "web", "api", "--header", "nope", "--server", url]) == 2
    assert main(["delete", "route", "--server", url]) == 2
    assert main(["--token-file", str(tmp_path / "none"), "status"]) == 2
