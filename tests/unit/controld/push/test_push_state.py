"""The push hub's sans-I/O bookkeeping: versions, adopt-on-restart, NACKs, rollouts."""

from __future__ import annotations

import json

import pytest

from controld.push.state import MAX_ROLLOUTS, PushState, UnknownProxy, next_version
from meshcore.model.base import SocketAddr
from meshcore.model.proxy import ProxyDescriptor
from meshcore.model.snapshot import Snapshot

SNAP = Snapshot(version=0)
T0 = 1_700_000_000.0


class Recorder:
    """A PushObserver that keeps what it is told."""

    def __init__(self) -> None:
        self.pushes = 0
        self.nacks = 0
        self.acks: list[float] = []
        self.convergence: list[float] = []

    def pushed(self) -> None:
        self.pushes += 1

    def nacked(self) -> None:
        self.nacks += 1

    def acked(self, latency_s: float) -> None:
        self.acks.append(latency_s)

    def converged(self, seconds: float) -> None:
        self.convergence.append(seconds)


def desc(pid: str = "web-1", service: str = "web", port: int = 15006) -> ProxyDescriptor:
    return ProxyDescriptor(
        proxy_id=pid, service=service, inbound=SocketAddr(host="127.0.0.1", port=port)
    )


def fresh(*pids: str) -> tuple[PushState, Recorder]:
    rec = Recorder()
    state = PushState(rec)
    for pid in pids or ("web-1",):
        assert state.register(desc(pid))
    return state, rec


def ack(state: PushState, pid: str, now: float) -> None:
    """The sidecar polls reporting the latest version/hash."""
    latest = state.get(pid).latest
    assert latest is not None
    state.observe_poll(pid, version=latest.version, hash=latest.hash, wait_s=30, now=now)


def test_next_version_is_monotonic_and_time_based() -> None:
    assert next_version(0, T0) == int(T0 * 1000)
    assert next_version(int(T0 * 1000), T0) == int(T0 * 1000) + 1
    assert next_version(10**15, T0) == 10**15 + 1


def test_versions_per_proxy() -> None:
    state, _ = fresh()
    assert state.publish({"web-1": (SNAP, "h1")}, revision=1, changed_at=T0, now=T0) == ["web-1"]
    first = state.get("web-1").latest
    assert first is not None and first.version == int(T0 * 1000)
    # Same hash: nothing changes.
    assert state.publish({"web-1": (SNAP, "h1")}, revision=2, changed_at=T0, now=T0 + 1) == []
    # A new hash in the same millisecond still gets a higher version.
    state.publish({"web-1": (SNAP, "h2")}, revision=3, changed_at=T0, now=T0)
    second = state.get("web-1").latest
    assert second is not None and second.version == first.version + 1
    state.publish({"web-1": (SNAP, "h3")}, revision=4, changed_at=T0, now=T0 + 5)
    third = state.get("web-1").latest
    assert third is not None and third.version == int((T0 + 5) * 1000)


def test_unregistered_ids_are_ignored_and_unknown_raises() -> None:
    state, _ = fresh()
    assert state.publish({"other": (SNAP, "h")}, revision=1, changed_at=T0, now=T0) == []
    with pytest.raises(UnknownProxy):
        state.observe_poll("other", version=None, hash=None, wait_s=1, now=T0)
    with pytest.raises(UnknownProxy):
        state.nack("other", version=1, hash="h", error="x", now=T0)
    assert state.unregister("web-1")
    assert not state.unregister("web-1")


def test_first_contact_gets_the_snapshot_then_nothing_until_a_new_hash() -> None:
    state, rec = fresh()
    state.observe_poll("web-1", version=None, hash=None, wait_s=30, now=T0)
    assert state.take("web-1") is None  # nothing compiled yet
    state.publish({"web-1": (SNAP, "h1")}, revision=1, changed_at=T0, now=T0)
    pushed = state.take("web-1")
    assert pushed is not None and pushed.hash == "h1"
    ack(state, "web-1", T0 + 0.25)
    assert state.take("web-1") is None
    assert rec.pushes == 1
    assert rec.acks == [0.25]


def test_a_restarted_sidecar_gets_the_snapshot_its_predecessor_acked() -> None:
    state, rec = fresh()
    state.publish({"web-1": (SNAP, "h1")}, revision=1, changed_at=T0, now=T0)
    assert state.take("web-1") is not None
    ack(state, "web-1", T0 + 0.25)
    # The sidecar restarts (same descriptor): its new process polls reporting nothing.
    assert not state.register(desc())
    state.observe_poll("web-1", version=None, hash=None, wait_s=30, now=T0 + 5)
    again = state.take("web-1")
    assert again is not None and again.hash == "h1"
    ack(state, "web-1", T0 + 5.1)
    assert state.take("web-1") is None
    assert rec.acks == [0.25]  # the second delivery is no new rollout to time


def test_body_is_serialized_once_with_the_version() -> None:
    state, _ = fresh()
    state.publish({"web-1": (SNAP, "abc")}, revision=1, changed_at=T0, now=T0)
    compiled = state.take("web-1")
    assert compiled is not None
    body = compiled.body()
    assert compiled.body() is body
    doc = json.loads(body)
    assert doc["version"] == compiled.version == doc["snapshot"]["version"]
    assert doc["hash"] == "abc"
    assert Snapshot.model_validate(doc["snapshot"]).version == compiled.version


def test_restart_adopts_the_sidecars_version_when_poll_comes_first() -> None:
    state, rec = fresh()
    # controld restarted: the sidecar re-registers and polls with what it runs.
    state.observe_poll("web-1", version=42, hash="h1", wait_s=30, now=T0)
    state.publish({"web-1": (SNAP, "h1")}, revision=7, changed_at=T0, now=T0 + 1)
    latest = state.get("web-1").latest
    assert latest is not None and latest.version == 42
    assert state.take("web-1") is None
    assert rec.pushes == 0
    # The next change goes past the adopted version.
    state.publish({"web-1": (SNAP, "h2")}, revision=8, changed_at=T0, now=T0 + 2)
    pushed = state.take("web-1")
    assert pushed is not None and pushed.version == int((T0 + 2) * 1000)


def test_restart_adopts_the_sidecars_version_when_compile_comes_first() -> None:
    state, rec = fresh()
    state.publish({"web-1": (SNAP, "h1")}, revision=7, changed_at=T0, now=T0)
    state.observe_poll("web-1", version=42, hash="h1", wait_s=30, now=T0 + 1)
    latest = state.get("web-1").latest
    assert latest is not None and latest.version == 42
    assert state.take("web-1") is None
    assert rec.pushes == 0 and rec.acks == []  # nothing was pushed: no latency


def test_a_stale_sidecar_hash_gets_the_new_snapshot() -> None:
    state, _ = fresh()
    state.observe_poll("web-1", version=42, hash="old", wait_s=30, now=T0)
    state.publish({"web-1": (SNAP, "new")}, revision=1, changed_at=T0, now=T0)
    pushed = state.take("web-1")
    assert pushed is not None and pushed.hash == "new" and pushed.version > 42


def test_nacked_hash_is_not_resent_until_a_different_one_is_compiled() -> None:
    state, rec = fresh()
    state.publish({"web-1": (SNAP, "h1")}, revision=1, changed_at=T0, now=T0)
    ack(state, "web-1", T0)
    state.publish({"web-1": (SNAP, "h2")}, revision=2, changed_at=T0, now=T0 + 1)
    bad = state.take("web-1")
    assert bad is not None and bad.hash == "h2"
    state.nack("web-1", version=bad.version, hash="h2", error="bind failed", now=T0 + 2)
    assert rec.nacks == 1
    nack = state.get("web-1").nack
    assert nack is not None and nack.error == "bind failed" and nack.hash == "h2"
    # The sidecar keeps polling with the old snapshot: no resend.
    state.observe_poll("web-1", version=1, hash="h1", wait_s=30, now=T0 + 3)
    assert state.take("web-1") is None
    state.publish({"web-1": (SNAP, "h2")}, revision=3, changed_at=T0, now=T0 + 4)
    assert state.take("web-1") is None
    # A different hash is sent.
    state.publish({"web-1": (SNAP, "h3")}, revision=4, changed_at=T0, now=T0 + 5)
    good = state.take("web-1")
    assert good is not None and good.hash == "h3"
    row = state.statuses(T0 + 5)[0].as_json()
    assert row["nack"]["error"] == "bind failed"
    assert row["acked_hash"] == "h1" and row["latest_hash"] == "h3"


def test_registering_again_retries_a_nacked_hash() -> None:
    state, _ = fresh()
    state.publish({"web-1": (SNAP, "h1")}, revision=1, changed_at=T0, now=T0)
    first = state.take("web-1")
    assert first is not None
    state.nack("web-1", version=first.version, hash="h1", error="bad", now=T0)
    state.observe_poll("web-1", version=None, hash=None, wait_s=30, now=T0)
    assert state.take("web-1") is None
    assert not state.register(desc())  # a restarted sidecar re-registers
    retry = state.take("web-1")
    assert retry is not None and retry.hash == "h1"
    last = state.get("web-1").nack
    assert last is not None and last.error == "bad"  # still reported


def test_convergence_is_observed_when_the_last_affected_proxy_acks() -> None:
    state, rec = fresh("a", "b", "c")
    state.publish({p: (SNAP, "v1") for p in ("a", "b", "c")}, revision=1, changed_at=T0, now=T0)
    for p in ("a", "b", "c"):
        ack(state, p, T0)
    rec.acks.clear()
    # Revision 2 changes a and b only (c's hash stays).
    state.publish(
        {"a": (SNAP, "v2"), "b": (SNAP, "v2"), "c": (SNAP, "v1")},
        revision=2,
        changed_at=T0 + 10,
        now=T0 + 10.5,
    )
    assert state.rollouts_pending() == 1
    ack(state, "a", T0 + 10.75)
    ack(state, "c", T0 + 10.8)  # unaffected: no effect
    assert rec.convergence == []
    ack(state, "b", T0 + 11.25)
    assert rec.convergence == [1.25]
    assert rec.acks == [0.25, 0.75]
    assert state.rollouts_pending() == 0
    # A repeated ACK changes nothing.
    ack(state, "b", T0 + 12)
    assert rec.convergence == [1.25] and len(rec.acks) == 2


def test_a_newer_hash_acks_older_rollouts_too() -> None:
    state, rec = fresh("a")
    state.publish({"a": (SNAP, "v1")}, revision=1, changed_at=T0, now=T0)
    ack(state, "a", T0)
    state.publish({"a": (SNAP, "v2")}, revision=2, changed_at=T0 + 1, now=T0 + 1)
    state.publish({"a": (SNAP, "v3")}, revision=3, changed_at=T0 + 2, now=T0 + 2)
    assert state.rollouts_pending() == 2
    ack(state, "a", T0 + 3)
    assert sorted(rec.convergence) == [1.0, 2.0]


def test_new_proxies_join_no_rollout_and_nack_or_leave_ends_it_unobserved() -> None:
    state, rec = fresh("a", "b")
    state.publish({"a": (SNAP, "v1"), "b": (SNAP, "v1")}, revision=1, changed_at=T0, now=T0)
    assert state.rollouts_pending() == 0  # first snapshots: no rollout
    ack(state, "a", T0)
    ack(state, "b", T0)
    state.publish({"a": (SNAP, "v2"), "b": (SNAP, "v2")}, revision=2, changed_at=T0, now=T0)
    latest_a = state.get("a").latest
    assert latest_a is not None
    state.nack("a", version=latest_a.version, hash="v2", error="bad", now=T0 + 1)
    assert state.unregister("b")
    assert state.rollouts_pending() == 0
    assert rec.convergence == []


def test_rollouts_are_bounded() -> None:
    state, _ = fresh("a")
    state.publish({"a": (SNAP, "v0")}, revision=0, changed_at=T0, now=T0)
    for i in range(MAX_ROLLOUTS + 10):
        state.publish({"a": (SNAP, f"v{i + 1}")}, revision=i + 1, changed_at=T0, now=T0)
    assert state.rollouts_pending() == MAX_ROLLOUTS


def test_changed_descriptor_holds_back_the_old_snapshot() -> None:
    state, _ = fresh()
    state.publish({"web-1": (SNAP, "h1")}, revision=1, changed_at=T0, now=T0)
    assert not state.register(desc())  # same descriptor: nothing to do
    assert state.register(desc(port=16000))
    state.observe_poll("web-1", version=None, hash=None, wait_s=30, now=T0)
    assert state.take("web-1") is None
    # Recompiled to the same hash: released as it is.
    assert state.publish({"web-1": (SNAP, "h1")}, revision=1, changed_at=T0, now=T0) == ["web-1"]
    assert state.take("web-1") is not None
    assert state.descriptors()["web-1"].inbound == SocketAddr(host="127.0.0.1", port=16000)


def test_connected_means_parked_or_recent_contact() -> None:
    state, _ = fresh()
    proxy = state.get("web-1")
    assert not proxy.connected(T0)
    state.observe_poll("web-1", version=None, hash=None, wait_s=30, now=T0)
    assert proxy.connected(T0 + 60)
    assert not proxy.connected(T0 + 61)
    proxy.parked = 1
    assert proxy.connected(T0 + 1000)
    assert state.connected_count(T0 + 1000) == 1
    row = state.statuses(T0)[0].as_json()
    assert row["proxy_id"] == "web-1" and row["service"] == "web"
    assert row["namespace"] == "default" and row["connected"] is True
    assert row["last_contact"] == T0 and row["nack"] is None
