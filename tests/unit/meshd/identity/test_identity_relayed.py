"""A worker's identity: the primary's, relayed over the channel (values in, identity out)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from meshd.identity.keys import generate_key, key_to_pem
from meshd.identity.material import Identity, parse_identity
from meshd.workers.feed import WorkerFeed
from meshd.workers.identity import RelayedIdentity

from .identity_testca import TestCA

pytestmark = pytest.mark.timeout(30)

SPIFFE = "spiffe://mesh.local/ns/default/svc/web"


def make_identity(ca: TestCA) -> Identity:
    key = generate_key()
    now = datetime.now(UTC).replace(microsecond=0)
    cert = ca.sign(key.public_key(), SPIFFE, not_before=now, not_after=now + timedelta(hours=1))
    return parse_identity(key_to_pem(key), cert, (ca.pem,))


def test_relayed_identity_follows_the_primary_messages(ca: TestCA) -> None:
    feed = WorkerFeed()
    identity = make_identity(ca)
    feed.publish_identity(identity)
    feed.publish_revoked(frozenset({0xABC, 7}))
    relayed = RelayedIdentity()
    identity_msg, revoked_msg = feed.waiting()
    relayed.apply(identity_msg)
    relayed.apply_revoked(revoked_msg)
    current = relayed.current
    assert current is not None
    assert (current.cert_pem, current.key_pem, current.bundle_pems) == (
        identity.cert_pem,
        identity.key_pem,
        identity.bundle_pems,
    )
    assert current.spiffe_id == SPIFFE
    assert relayed.revoked == frozenset({0xABC, 7})
    assert relayed.describe()["from_primary"] is True
    # Expired at the primary: dropped here too.
    feed.publish_identity(None)
    relayed.apply(feed.waiting()[0])
    assert relayed.current is None
    assert relayed.version == 3
