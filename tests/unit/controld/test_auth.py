"""controld's token auth: the admin token file, sidecar tokens, header parsing."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from controld.auth import Forbidden, Principal, TokenAuth, TokenFileError, Unauthenticated
from controld.sealed import RecordKey
from controld.sidecar_tokens import SidecarTokens

# The in-memory KV of the CA tests (one definition), importable when only these tests run.
sys.path.insert(0, str(Path(__file__).parent / "ca"))
from ca_support import FakeKV

ADMIN = "a" * 43


async def test_token_file_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "admin-token"
    auth = TokenAuth.from_file(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    token = path.read_text().strip()
    assert len(token) >= 43
    assert await auth.authenticate(f"Bearer {token}") == Principal("admin")


async def test_token_file_is_reused(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    first = TokenAuth.from_file(path)
    token = path.read_text().strip()
    second = TokenAuth.from_file(path)
    assert path.read_text().strip() == token
    assert await second.verify(token) == await first.verify(token) == Principal("admin")


async def test_existing_token_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    path.write_text(f"  {ADMIN}\n")
    path.chmod(0o600)
    assert (await TokenAuth.from_file(path).verify(ADMIN)).name == "admin"


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


def _auth(kv: FakeKV | None = None) -> TokenAuth:
    store = SidecarTokens(kv if kv is not None else FakeKV(), "meshd/", RecordKey(b"k" * 32))
    return TokenAuth(ADMIN, store)


async def test_sidecar_token_round_trip() -> None:
    auth = _auth()
    token, record = await auth.mint_sidecar("api.v2")
    assert token.startswith(f"sidecar.{record.id}.")
    principal = await auth.authenticate(f"Bearer {token}")
    assert principal == Principal("sidecar", "api.v2", "default", None, record.id)
    assert principal.name == "sidecar:api.v2"
    assert not principal.is_admin


async def test_sidecar_tokens_need_the_registry() -> None:
    with pytest.raises(ValueError, match="registry"):
        await TokenAuth(ADMIN).mint_sidecar("web")
    token, _ = await _auth().mint_sidecar("web")
    with pytest.raises(Unauthenticated, match="invalid token"):
        await TokenAuth(ADMIN).verify(token)


async def test_old_format_token_is_refused_with_a_clear_message() -> None:
    with pytest.raises(Unauthenticated, match="old-format sidecar token"):
        await _auth().verify("sidecar.web." + "0" * 64)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "nope",
        "a" * 42,
        "sidecar.web.",
        "sidecar.web.xyz",
        "sidecar..0123",
        "sidecar." + "0" * 32 + "." + "A" * 43,  # well-formed, unknown
        "admin\u00e9" + "a" * 40,
    ],
)
async def test_invalid_tokens(token: str) -> None:
    with pytest.raises(Unauthenticated, match="invalid token"):
        await _auth().verify(token)


async def test_wrong_secret_is_rejected() -> None:
    auth = _auth()
    token, record = await auth.mint_sidecar("web")
    with pytest.raises(Unauthenticated, match="invalid token"):
        await auth.verify(f"sidecar.{record.id}.{'A' * 43}")
    assert (await auth.verify(token)).service == "web"


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer   ", f"Basic {ADMIN}", f"Token {ADMIN}", ADMIN]
)
async def test_bad_headers(header: str | None) -> None:
    with pytest.raises(Unauthenticated):
        await _auth().authenticate(header)


async def test_bearer_scheme_is_case_insensitive() -> None:
    assert (await _auth().authenticate(f"bearer {ADMIN}")).is_admin


@pytest.mark.parametrize("service", ["", "Web", "web service", "-web", "a" * 200])
async def test_mint_rejects_bad_service_names(service: str) -> None:
    with pytest.raises(ValueError, match="invalid service"):
        await _auth().mint_sidecar(service)


WEB_ID = "spiffe://mesh.local/ns/default/svc/web"


async def test_client_certificate_alone_is_its_workload() -> None:
    principal = await _auth().authenticate(None, peer_id=WEB_ID)
    assert principal == Principal("sidecar", "web", "default", WEB_ID)
    # Not a workload ID (controld's own): no principal from it.
    with pytest.raises(Unauthenticated):
        await _auth().authenticate(None, peer_id="spiffe://mesh.local/controld")


async def test_token_of_another_service_than_the_certificate_is_refused() -> None:
    auth = _auth()
    api_token, _ = await auth.mint_sidecar("api")
    with pytest.raises(Forbidden, match="does not belong"):
        await auth.authenticate(f"Bearer {api_token}", peer_id=WEB_ID)
    with pytest.raises(Forbidden, match="does not belong"):
        await auth.authenticate(f"Bearer {ADMIN}", peer_id=WEB_ID)
    web_token, record = await auth.mint_sidecar("web")
    principal = await auth.authenticate(f"Bearer {web_token}", peer_id=WEB_ID)
    assert principal == Principal("sidecar", "web", "default", WEB_ID, record.id)


async def test_bound_token_with_another_identity_is_refused() -> None:
    auth = _auth()
    other = "spiffe://other.domain/ns/default/svc/web"
    token, _ = await auth.mint_sidecar("web", identity=other, serial="1f")
    with pytest.raises(Forbidden):
        await auth.authenticate(f"Bearer {token}", peer_id=WEB_ID)
    assert (await auth.authenticate(f"Bearer {token}")).identity == other
