"""The bundle watch of IdentityService, renewal on a root rotation, and identity loss.

Virtual time as in ``test_identity_service``; a fake issuer that can switch its signing root
and a fake bundle endpoint with blocking-query semantics stand in for controld.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from meshd.control.client import ControlClient, ControlUnavailable
from meshd.identity.client import Bundle, IdentityClient, Issued
from meshd.identity.files import IdentityStore
from meshd.identity.material import Identity, issued_by
from meshd.identity.service import IdentityService
from meshd.mtls import MeshTls
from meshd.net.stream import SocketStream

from .identity_testca import TestCA
from .test_identity_service import SPIFFE, TTL, FakeIssuer, clock

JITTER_S = 5.0


@pytest.fixture
def vclock() -> trio.testing.MockClock:
    """Virtual time that jumps only after a moment of real idleness: the identity files are
    written in a thread, which a zero-threshold autojump would take for idleness and jump
    over a deadline (0.02 s was too short on a loaded machine: a renewal came first)."""
    return trio.testing.MockClock(autojump_threshold=0.1)


class RotatingIssuer(FakeIssuer):
    """Signs with ``signer``; answers carry ``roots`` and ``index`` like controld's."""

    def __init__(self, ca: TestCA) -> None:
        super().__init__(ca)
        self.signer = ca
        self.roots: tuple[bytes, ...] = (ca.pem,)
        self.index = 1

    def _issue(self, csr: x509.CertificateSigningRequest, token: str = "") -> Issued:
        del token  # no sidecar token here
        start = datetime.fromtimestamp(int(clock()), UTC)
        public_key = csr.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        cert = self.signer.sign(
            public_key, SPIFFE, not_before=start, not_after=start + timedelta(seconds=TTL)
        )
        return Issued(cert, self.roots, SPIFFE, "", bundle_index=self.index)


class FakeBundles(IdentityClient):
    """``watch_bundle`` with blocking-query semantics over :meth:`publish`ed bundles."""

    def __init__(self, issuer: RotatingIssuer, *, with_index: bool = True) -> None:
        super().__init__(ControlClient("http://127.0.0.1:9"))
        self.issuer = issuer
        self.with_index = with_index
        self.failing = False
        self.calls: list[int | None] = []
        self._changed = trio.Event()

    def current(self) -> Bundle:
        issuer = self.issuer
        return Bundle(
            "mesh.test",
            issuer.roots,
            issuer.signer.pem,
            issuer.index if self.with_index else None,
        )

    def publish(self, roots: tuple[bytes, ...], signer: TestCA) -> None:
        """A rotation step in controld: the issuer and the bundle change together."""
        self.issuer.roots, self.issuer.signer = roots, signer
        self.issuer.index += 1
        self._changed.set()
        self._changed = trio.Event()

    async def watch_bundle(self, index: int | None, wait_s: float = 0.0) -> Bundle:
        self.calls.append(index)
        await trio.lowlevel.checkpoint()
        if self.failing:
            raise ControlUnavailable("down")
        if index is not None and index == self.issuer.index:
            with trio.move_on_after(wait_s):
                await self._changed.wait()
        return self.current()


def service(tmp_path: Path, issuer: RotatingIssuer, bundles: FakeBundles) -> IdentityService:
    (tmp_path / "join.token").write_text("join.1.secret\n")
    return IdentityService(
        IdentityStore(tmp_path / "state"),
        issuer,
        service="web",
        join_token_file=tmp_path / "join.token",
        clock=clock,
        retry_initial_s=1.0,
        retry_max_s=8.0,
        bundle_client=bundles,
        rotation_renew_jitter_s=JITTER_S,
        bundle_wait_s=300.0,
    )


async def next_identity(svc: IdentityService, after: Identity) -> Identity:
    with trio.fail_after(TTL):
        return await svc.wait_changed(after.generation)


async def test_rotation_bundle_applies_at_once_then_renews_soon(
    tmp_path: Path, ca: TestCA, vclock: trio.abc.Clock
) -> None:
    new = TestCA("new root")
    issuer = RotatingIssuer(ca)
    bundles = FakeBundles(issuer)
    svc = service(tmp_path, issuer, bundles)
    async with trio.open_nursery() as nursery:
        first: Identity = await nursery.start(svc.run)
        await trio.sleep(1)
        assert svc.bundle is not None and svc.bundle.index == 1

        # Stage: both roots trusted at once, same leaf and key; saved with the identity.
        bundles.publish((ca.pem, new.pem), ca)
        staged = await next_identity(svc, first)
        assert staged.bundle_pems == (ca.pem, new.pem)
        assert (staged.cert_pem, staged.key_pem) == (first.cert_pem, first.key_pem)
        assert IdentityStore(tmp_path / "state").load() == staged.with_generation(0)
        assert issuer.renewals == []

        # Activate: the new root signs, so the leaf renews within the jitter, not at 50 %.
        bundles.publish((ca.pem, new.pem), new)
        activated_at = clock()
        renewed = await next_identity(svc, staged)
        assert issuer.renewals and issuer.renewals[0] - activated_at <= JITTER_S + 1
        assert issued_by(renewed.cert_pem, new.pem)
        assert renewed.bundle_pems == (ca.pem, new.pem)

        # Retire: only the new root left, the leaf kept.
        bundles.publish((new.pem,), new)
        retired = await next_identity(svc, renewed)
        assert retired.bundle_pems == (new.pem,) and retired.cert_pem == renewed.cert_pem
        # Back to the usual schedule: no renewal for a while.
        count = len(issuer.renewals)
        await trio.sleep(0.4 * TTL)
        assert len(issuer.renewals) == count
        nursery.cancel_scope.cancel()


async def test_keeps_the_last_bundle_while_controld_is_unreachable(
    tmp_path: Path, ca: TestCA, vclock: trio.abc.Clock
) -> None:
    new = TestCA("new root")
    issuer = RotatingIssuer(ca)
    bundles = FakeBundles(issuer)
    svc = service(tmp_path, issuer, bundles)
    async with trio.open_nursery() as nursery:
        first: Identity = await nursery.start(svc.run)
        bundles.failing = True
        bundles.publish((ca.pem, new.pem), ca)
        await trio.sleep(60)
        assert svc.current == first
        assert "bundle" in str(svc.describe()["bundle_error"])
        calls = len(bundles.calls)
        bundles.failing = False
        staged = await next_identity(svc, first)
        assert staged.bundle_pems == (ca.pem, new.pem)
        assert svc.describe()["bundle_error"] is None
        # Retried with backoff, not in a tight loop.
        assert calls < 60
        nursery.cancel_scope.cancel()


async def test_a_bundle_without_the_leafs_root_renews_first(
    tmp_path: Path, ca: TestCA, vclock: trio.abc.Clock
) -> None:
    new = TestCA("new root")
    issuer = RotatingIssuer(ca)
    bundles = FakeBundles(issuer)
    svc = service(tmp_path, issuer, bundles)
    async with trio.open_nursery() as nursery:
        first: Identity = await nursery.start(svc.run)
        # A forced retire: the leaf's root is gone from the bundle at once.
        bundles.publish((new.pem,), new)
        renewed = await next_identity(svc, first)
        assert issued_by(renewed.cert_pem, new.pem)
        assert renewed.bundle_pems == (new.pem,)
        nursery.cancel_scope.cancel()


async def test_an_older_controld_is_polled(
    tmp_path: Path, ca: TestCA, vclock: trio.abc.Clock
) -> None:
    issuer = RotatingIssuer(ca)
    bundles = FakeBundles(issuer, with_index=False)
    svc = service(tmp_path, issuer, bundles)
    svc.bundle_poll_s = 60.0
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        await trio.sleep(300)
        assert 4 <= len(bundles.calls) <= 7
        assert set(bundles.calls) == {None}
        nursery.cancel_scope.cancel()


def tls_state(tls: MeshTls) -> tuple[Identity | None, bool]:
    # A call: mypy would keep the narrowing of an earlier assert on the attributes.
    return tls.identity, tls.lost


async def test_expiry_is_seen_by_mesh_tls(
    tmp_path: Path, ca: TestCA, vclock: trio.abc.Clock
) -> None:
    issuer = RotatingIssuer(ca)
    svc = service(tmp_path, issuer, FakeBundles(issuer))
    tls = MeshTls()
    tls.mode = "strict"
    async with trio.open_nursery() as nursery:
        first: Identity = await nursery.start(svc.run)
        nursery.start_soon(tls.run, svc)
        await trio.sleep(1)
        assert tls_state(tls) == (first, False)
        issuer.failing = True
        version = svc.version
        with trio.fail_after(2 * TTL):
            while svc.current is not None:
                version = await svc.wait_version(version)
        await trio.sleep(1)
        # Not offered any more; STRICT inbound refuses rather than falling back to plaintext.
        assert tls_state(tls) == (None, True) and tls.inbound_active
        assert tls.server_strict is None and tls.client is not None
        a, b = socket.socketpair()
        with b:
            a.setblocking(False)
            assert await tls.accept(SocketStream(a), set()) is None
            assert a.fileno() == -1
        assert tls.no_identity_refused == 1
        nursery.cancel_scope.cancel()
