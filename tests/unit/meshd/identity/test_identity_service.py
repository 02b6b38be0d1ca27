"""IdentityService on virtual time: a fake issuer stands in for controld's CA.

The service's wall clock is ``BASE + trio.current_time()`` under trio's autojump clock, so
hours of certificate lifetime pass instantly and renewal times can be checked exactly
(certificate times are whole seconds, hence the 1 s slack).
"""

from __future__ import annotations

import math
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from meshd.control.client import ControlClient, ControlUnavailable
from meshd.identity.client import Bundle, IdentityClient, Issued
from meshd.identity.csr import spiffe_ids
from meshd.identity.errors import EnrollmentRefused, IdentityError
from meshd.identity.files import IdentityStore
from meshd.identity.keys import generate_key, key_to_pem
from meshd.identity.material import Identity, parse_identity
from meshd.identity.service import RENEW_FROM, RENEW_TO, IdentityService, renewal_delay

from .identity_testca import TestCA

SPIFFE = "spiffe://mesh.test/ns/default/svc/web"
BASE = float(int(time.time()))
TTL = 1000.0


def clock() -> float:
    return BASE + trio.current_time()


class FakeIssuer(IdentityClient):
    """Signs what the service asks for; refuses to renew an expired leaf."""

    def __init__(self, ca: TestCA, *, ttl_s: float = TTL) -> None:
        super().__init__(ControlClient("http://127.0.0.1:9"))
        self.ca = ca
        self.ttl_s = ttl_s
        self.failing = False
        self.enrolls: list[tuple[float, str, x509.CertificateSigningRequest]] = []
        self.renewals: list[float] = []
        self.last: x509.Certificate | None = None

    def _issue(self, csr: x509.CertificateSigningRequest, token: str = "sidecar.web.x") -> Issued:
        start = datetime.fromtimestamp(int(clock()), UTC)
        public_key = csr.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        cert = self.ca.sign(
            public_key, SPIFFE, not_before=start, not_after=start + timedelta(seconds=self.ttl_s)
        )
        self.last = x509.load_pem_x509_certificate(cert)
        return Issued(cert, (self.ca.pem,), SPIFFE, "", sidecar_token=token)

    async def enroll(
        self, token: str, csr: x509.CertificateSigningRequest, *, instance: str | None = None
    ) -> Issued:
        await trio.lowlevel.checkpoint()
        self.enrolls.append((clock(), token, csr))
        if self.failing:
            raise ControlUnavailable("down")
        if token != "join.1.secret":
            raise EnrollmentRefused("enroll: HTTP 401: join token unknown", 401)
        return self._issue(csr)

    async def renew(self, csr: x509.CertificateSigningRequest) -> Issued:
        # The real call presents the current leaf over mutual TLS: the last one issued here.
        await trio.lowlevel.checkpoint()
        now = clock()
        self.renewals.append(now)
        if self.failing:
            raise ControlUnavailable("down")
        current = self.last  # None: the service started with a saved leaf
        if current is not None and current.not_valid_after_utc.timestamp() <= now:
            raise EnrollmentRefused("renew: HTTP 401: expired", 401)
        # Each renewal brings a fresh sidecar token, as controld's does.
        return self._issue(csr, f"sidecar.web.r{len(self.renewals)}")


class SilentBundle(IdentityClient):
    """A bundle long-poll that never answers: no bundle news, and no retry timers either
    (failing fetches would add deadlines the autojump clock runs through while a save is in
    its thread, moving the renewal schedule)."""

    def __init__(self) -> None:
        super().__init__(ControlClient("http://127.0.0.1:9"))

    async def watch_bundle(self, index: int | None, wait_s: float = 0.0) -> Bundle:
        await trio.sleep_forever()


def service(
    tmp_path: Path,
    issuer: FakeIssuer,
    *,
    token: str | None = "join.1.secret",
    trust_domain: str | None = None,
) -> IdentityService:
    token_file = tmp_path / "join.token"
    if token is not None:
        token_file.write_text(token + "\n")
    return IdentityService(
        IdentityStore(tmp_path / "state"),
        issuer,
        service="web",
        join_token_file=token_file,
        clock=clock,
        retry_initial_s=1.0,
        retry_max_s=8.0,
        trust_domain=trust_domain,
        bundle_client=SilentBundle(),
    )


def current(svc: IdentityService) -> Identity | None:
    # A call, not the attribute: mypy would keep an earlier assert's narrowing.
    return svc.current


def saved(ca: TestCA, tmp_path: Path, *, not_after: float) -> Identity:
    key = generate_key()
    start = datetime.fromtimestamp(int(clock()) - 10, UTC)
    cert = ca.sign(
        key.public_key(),
        SPIFFE,
        not_before=start,
        not_after=datetime.fromtimestamp(not_after, UTC),
    )
    identity = parse_identity(key_to_pem(key), cert, (ca.pem,))
    IdentityStore(tmp_path / "state").save(identity)
    return identity


def test_renewal_delay_bounds() -> None:
    rng = random.Random(7)
    delays = [renewal_delay(1000.0, 2000.0, 1000.0, rng) for _ in range(2000)]
    assert all(RENEW_FROM * 1000 <= d <= RENEW_TO * 1000 for d in delays)
    # Spread over the window, not bunched at one end.
    assert min(delays) < 520 and max(delays) > 680
    # Later "now": what's left of the wait; past the window: renew at once.
    assert 0 <= renewal_delay(1000.0, 2000.0, 1550.0, rng) <= 150
    assert renewal_delay(1000.0, 2000.0, 1900.0, rng) == 0.0
    assert renewal_delay(1000.0, 1000.0, 1000.0, rng) == 0.0


async def test_enrolls_then_renews_within_50_to_70_percent(
    tmp_path: Path, ca: TestCA, autojump_clock: trio.abc.Clock
) -> None:
    issuer = FakeIssuer(ca)
    svc = service(tmp_path, issuer, trust_domain="mesh.test")
    async with trio.open_nursery() as nursery:
        first: Identity = await nursery.start(svc.run)
        assert first.generation == 1 and svc.current == first
        assert first.spiffe_id == SPIFFE
        # The token is spent and forgotten; the service's API token is kept.
        assert not (tmp_path / "join.token").exists()
        assert svc.sidecar_token == "sidecar.web.x"
        assert IdentityStore(tmp_path / "state").load_sidecar_token() == "sidecar.web.x"
        [(_, _, csr)] = issuer.enrolls
        assert spiffe_ids(csr) == [SPIFFE]

        identity = first
        for _ in range(4):
            start = identity.not_before.timestamp()
            identity = await svc.wait_changed(identity.generation)
            at = issuer.renewals[-1]
            assert start + RENEW_FROM * TTL - 1 <= at <= start + RENEW_TO * TTL + 1
        assert identity.generation == 5 and len(issuer.renewals) == 4
        assert IdentityStore(tmp_path / "state").load() == identity.with_generation(0)
        # The latest renewal's token is the one in use, and saved (while the next waits: in
        # a thread, so real time is given to it here, bounded).
        assert svc.sidecar_token == "sidecar.web.r4"
        # Virtual time stands still while real time passes: otherwise each thread hop lets the
        # autojump clock run through the next renewals (and past the cert's expiry).
        assert isinstance(autojump_clock, trio.testing.MockClock)
        autojump_clock.autojump_threshold = math.inf
        for _ in range(500):
            saved = IdentityStore(tmp_path / "state").load_sidecar_token()
            if saved == svc.sidecar_token:
                break
            await trio.to_thread.run_sync(time.sleep, 0.01)
        assert saved == svc.sidecar_token
        assert saved is not None and saved.startswith("sidecar.web.r")
        nursery.cancel_scope.cancel()


async def test_keeps_the_cert_while_controld_is_down_then_drops_it_at_expiry(
    tmp_path: Path, ca: TestCA, autojump_clock: trio.abc.Clock
) -> None:
    issuer = FakeIssuer(ca)
    svc = service(tmp_path, issuer)
    async with trio.open_nursery() as nursery:
        first: Identity = await nursery.start(svc.run)
        issuer.failing = True
        expiry = first.not_after.timestamp()
        await trio.sleep(expiry - 50 - clock())
        # Past the renewal window: retrying, the current cert still in force.
        assert len(issuer.renewals) > 1
        assert current(svc) == first
        assert "renewal" in str(svc.describe()["last_error"])
        await trio.sleep(expiry + 1 - clock())
        assert current(svc) is None
        # controld back, but the cert expired: refused; a new join token re-enrolls.
        issuer.failing = False
        await trio.sleep(20)
        assert current(svc) is None
        (tmp_path / "join.token").write_text("join.1.secret")
        second = await svc.wait_changed(first.generation)
        assert second.generation == 2 and len(issuer.enrolls) == 2
        nursery.cancel_scope.cancel()


async def test_enrollment_retries_while_controld_is_down(
    tmp_path: Path, ca: TestCA, autojump_clock: trio.abc.Clock
) -> None:
    issuer = FakeIssuer(ca)
    issuer.failing = True
    svc = service(tmp_path, issuer)
    async with trio.open_nursery() as nursery:

        async def back_later() -> None:
            await trio.sleep(30)
            issuer.failing = False

        nursery.start_soon(back_later)
        first: Identity = await nursery.start(svc.run)
        assert len(issuer.enrolls) > 2
        assert first.generation == 1
        nursery.cancel_scope.cancel()


async def test_saved_identity_is_used_without_enrolling(tmp_path: Path, ca: TestCA) -> None:
    saved_identity = saved(ca, tmp_path, not_after=clock() + 3600)
    issuer = FakeIssuer(ca)
    svc = service(tmp_path, issuer, token=None)
    async with trio.open_nursery() as nursery:
        loaded: Identity = await nursery.start(svc.run)
        assert loaded == saved_identity.with_generation(1)
        assert issuer.enrolls == []
        nursery.cancel_scope.cancel()


async def test_expired_saved_identity_without_token_fails(tmp_path: Path, ca: TestCA) -> None:
    saved(ca, tmp_path, not_after=clock() - 1)
    svc = service(tmp_path, FakeIssuer(ca), token=None)
    with pytest.raises(IdentityError, match="expired"):
        await svc.run()


async def test_expired_or_broken_saved_identity_with_token_reenrolls(
    tmp_path: Path, ca: TestCA
) -> None:
    old = saved(ca, tmp_path, not_after=clock() - 1)
    issuer = FakeIssuer(ca)
    svc = service(tmp_path, issuer)
    async with trio.open_nursery() as nursery:
        fresh: Identity = await nursery.start(svc.run)
        assert fresh.cert_pem != old.cert_pem and len(issuer.enrolls) == 1
        nursery.cancel_scope.cancel()
    (IdentityStore(tmp_path / "state").current_dir / "key.pem").write_bytes(b"broken")
    (tmp_path / "join.token").write_text("join.1.secret")
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        assert len(issuer.enrolls) == 2
        nursery.cancel_scope.cancel()


async def test_no_identity_and_no_token_fails(tmp_path: Path, ca: TestCA) -> None:
    svc = service(tmp_path, FakeIssuer(ca), token=None)
    with pytest.raises(IdentityError, match="join token"):
        await svc.run()


async def test_refused_token_is_fatal_and_kept(tmp_path: Path, ca: TestCA) -> None:
    svc = service(tmp_path, FakeIssuer(ca), token="join.2.wrong")
    with pytest.raises(EnrollmentRefused, match="401"):
        await svc.run()
    assert svc.current is None
    assert "401" in str(svc.describe()["last_error"])
    assert (tmp_path / "join.token").exists()


async def test_unsaved_identity_still_serves_and_says_why(tmp_path: Path, ca: TestCA) -> None:
    (tmp_path / "not-a-dir").write_text("")
    issuer = FakeIssuer(ca)
    (tmp_path / "join.token").write_text("join.1.secret")
    svc = IdentityService(
        IdentityStore(tmp_path / "not-a-dir" / "state"),
        issuer,
        service="web",
        join_token_file=tmp_path / "join.token",
        clock=clock,
    )
    async with trio.open_nursery() as nursery:
        first: Identity = await nursery.start(svc.run)
        assert svc.current == first
        assert "cannot save" in str(svc.describe()["last_error"])
        nursery.cancel_scope.cancel()
