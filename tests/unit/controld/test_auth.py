"""controld's token auth: the admin token file, sidecar tokens, header parsing."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from controld.auth import Forbidden, Principal, TokenAuth, TokenFileError, Unauthenticated

ADMIN = "a" * 43


def test_token_file_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "admin-token"
    auth = TokenAuth.from_file(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    token = path.read_text().strip()
    assert len(token) >= 43
    assert auth.authenticate(f"Bearer {token}") == Principal("admin")


def test_token_file_is_reused(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    first = TokenAuth.from_file(path)
    token = path.read_text().strip()
    second = TokenAuth.from_file(path)
    assert path.read_text().strip() == token
    # Both instances derive the same sidecar key from the same admin token.
    assert second.verify(first.mint_sidecar("web")) == Principal("sidecar", "web")


def test_existing_token_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    path.write_text(f"  {ADMIN}\n")
    path.chmod(0o600)
    assert TokenAuth.from_file(path).verify(ADMIN).name == "admin"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_group_or_world_readable_file_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "admin-token"
    path.write_text(ADMIN)
    path.chmod(mode)
    with pytest.raises(TokenFileError, match="chmod 600"):
        TokenAuth.from_file(path)


def test_empty_or_short_token_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    path.write_text("short\n")
    path.chmod(0o600)
    with pytest.raises(TokenFileError, match="no token"):
        TokenAuth.from_file(path)


def test_unreadable_token_path_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "dir-not-file"
    path.mkdir(mode=0o700)
    with pytest.raises(TokenFileError):
        TokenAuth.from_file(path)


def test_uncreatable_token_dir_is_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(TokenFileError, match="cannot create"):
        TokenAuth.from_file(blocker / "admin-token")


def test_short_admin_token_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least"):
        TokenAuth("tiny")


def test_sidecar_token_round_trip() -> None:
    auth = TokenAuth(ADMIN)
    token = auth.mint_sidecar("api.v2")
    assert token.startswith("sidecar.api.v2.")
    principal = auth.authenticate(f"Bearer {token}")
    assert principal == Principal("sidecar", "api.v2")
    assert principal.name == "sidecar:api.v2"
    assert not principal.is_admin
    # The same principal object for every request of a service (no per-poll allocation).
    assert auth.verify(token) is principal


def test_sidecar_token_is_bound_to_the_admin_token() -> None:
    token = TokenAuth(ADMIN).mint_sidecar("web")
    with pytest.raises(Unauthenticated):
        TokenAuth("b" * 43).verify(token)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "nope",
        "a" * 42,
        "sidecar.web.",
        "sidecar.web.xyz",
        "sidecar..0123",
        "sidecar.web." + "0" * 64,
        "sidecar.Web." + "0" * 64,
        "admin\u00e9" + "a" * 40,
    ],
)
def test_invalid_tokens(token: str) -> None:
    with pytest.raises(Unauthenticated, match="invalid token"):
        TokenAuth(ADMIN).verify(token)


def test_tampered_service_is_rejected() -> None:
    auth = TokenAuth(ADMIN)
    mac = auth.mint_sidecar("web").rpartition(".")[2]
    with pytest.raises(Unauthenticated):
        auth.verify(f"sidecar.api.{mac}")


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer   ", f"Basic {ADMIN}", f"Token {ADMIN}", ADMIN]
)
def test_bad_headers(header: str | None) -> None:
    with pytest.raises(Unauthenticated):
        TokenAuth(ADMIN).authenticate(header)


def test_bearer_scheme_is_case_insensitive() -> None:
    assert TokenAuth(ADMIN).authenticate(f"bearer {ADMIN}").is_admin


@pytest.mark.parametrize("service", ["", "Web", "web service", "-web", "a" * 200])
def test_mint_rejects_bad_service_names(service: str) -> None:
    with pytest.raises(ValueError, match="invalid service"):
        TokenAuth(ADMIN).mint_sidecar(service)


def test_principal_scopes() -> None:
    admin = Principal("admin")
    web = Principal("sidecar", "web")
    admin.require_admin()
    admin.require_service("anything")
    web.require_service("web")
    with pytest.raises(Forbidden):
        web.require_admin()
    with pytest.raises(Forbidden, match="sidecar:web"):
        web.require_service("api")
