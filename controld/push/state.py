"""The push hub's bookkeeping as plain synchronous code: versions, ACKs, NACKs, rollouts.

Nothing here waits or does I/O; the caller passes the time (``time.time()`` seconds) in.
:class:`PushState` holds one :class:`ProxyState` per registered sidecar:

* the latest compiled snapshot (:class:`Compiled`: version, hash, snapshot, the JSON body
  serialized once on first use),
* what the sidecar reported running on its last poll (a poll *is* the ACK of that version),
* its last NACK, last contact and whether a poll is parked now,
* the snapshot features it declares (``x-meshd-features`` of its requests; None: an older
  sidecar that declares none) and the compiled snapshot it ACKed, when controld has it.

Rules (see the controld API contract):

* Versions are monotonic per proxy: ``max(previous + 1, milliseconds since epoch)``. A newly
  compiled hash the sidecar already reports running keeps the sidecar's version, which is how
  a sidecar that survived a controld restart gets no push.
* A hash the sidecar NACKed is not sent again; a different hash compiled later is, and so
  is the NACKed one after the sidecar registers again (it restarted).
* Each publish that changes the hash of proxies that already had a snapshot starts a
  *rollout*; when every such proxy has ACKed (polled reporting the new hash, or a later one),
  the rollout's convergence time (``now - changed_at``) is reported to the observer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Protocol

from controld.push.proxy import (
    Compiled,
    NackRecord,
    ProxyState,
    ProxyStatus,
    SidecarInfo,
    proxy_status,
)
from meshcore.errors import MeshError
from meshcore.model.proxy import ProxyDescriptor
from meshcore.model.snapshot import Snapshot

__all__ = [
    "Compiled",
    "NackRecord",
    "ProxyState",
    "ProxyStatus",
    "PushObserver",
    "PushState",
    "SidecarInfo",
    "UnknownProxy",
    "next_version",
]

#: Rollouts still waiting for ACKs beyond this many are forgotten (oldest first), so sidecars
#: that never come back can't make the bookkeeping grow without bound.
MAX_ROLLOUTS = 256


class UnknownProxy(MeshError):
    """The proxy id is not registered (e.g. controld restarted): register it and poll again."""


class PushObserver(Protocol):
    """Where the bookkeeping reports what metrics count."""

    def pushed(self) -> None:
        """A snapshot was handed to a sidecar."""

    def nacked(self) -> None:
        """A sidecar rejected a snapshot."""

    def acked(self, latency_s: float) -> None:
        """A sidecar reported running the latest snapshot, ``latency_s`` after it was compiled."""

    def converged(self, seconds: float) -> None:
        """Every sidecar a change affected runs it, ``seconds`` after the change."""


class NullObserver:
    """A :class:`PushObserver` that ignores everything."""

    def pushed(self) -> None:
        """Ignored."""

    def nacked(self) -> None:
        """Ignored."""

    def acked(self, latency_s: float) -> None:
        """Ignored."""

    def converged(self, seconds: float) -> None:
        """Ignored."""


def next_version(previous: int, now: float) -> int:
    """The version after ``previous``: ``max(previous + 1, milliseconds since epoch)``."""
    return max(previous + 1, int(now * 1000))


class _Rollout:
    __slots__ = ("changed_at", "nacked", "pending", "revision")

    def __init__(self, revision: int, changed_at: float, pending: set[str]) -> None:
        self.revision = revision
        self.changed_at = changed_at
        self.pending = pending
        self.nacked = False


class PushState:
    """Per-proxy push bookkeeping (sans I/O); see the module doc for the rules."""

    def __init__(self, observer: PushObserver | None = None) -> None:
        self._observer: PushObserver = observer or NullObserver()
        self._proxies: dict[str, ProxyState] = {}
        self._rollouts: OrderedDict[int, _Rollout] = OrderedDict()
        self._rollout_seq = 0
        #: Proxy id -> rollouts it is pending in (so an ACK costs O(its rollouts)).
        self._pending_in: dict[str, set[int]] = {}

    # -- registrations -------------------------------------------------------------------------

    def register(self, descriptor: ProxyDescriptor, *, features: str | None = None) -> bool:
        """Add or refresh a sidecar; True when it needs (re)compiling (new or changed).

        ``features``: the features header of the registration, if it had one (its polls
        say it again; one without the header makes the features unknown).
        """
        state = self._proxies.get(descriptor.proxy_id)
        if state is None:
            state = self._proxies[descriptor.proxy_id] = ProxyState(descriptor)
            if features is not None:
                state.declare(features)
            return True
        if features is not None:
            state.declare(features)
        # The sidecar (re)started: give a snapshot it NACKed before another chance.
        state.nacked_hash = None
        if state.descriptor == descriptor:
            return False
        state.descriptor = descriptor
        state.stale = state.latest is not None
        return True

    def unregister(self, proxy_id: str) -> bool:
        """Forget a sidecar; False if it wasn't registered."""
        if self._proxies.pop(proxy_id, None) is None:
            return False
        self._drop_pending(proxy_id, nacked=False)
        return True

    def get(self, proxy_id: str) -> ProxyState:
        """The state of ``proxy_id``; raises :class:`UnknownProxy`."""
        try:
            return self._proxies[proxy_id]
        except KeyError:
            raise UnknownProxy(proxy_id) from None

    def descriptors(self) -> dict[str, ProxyDescriptor]:
        """Registered descriptors by proxy id."""
        return {pid: state.descriptor for pid, state in self._proxies.items()}

    def __contains__(self, proxy_id: object) -> bool:
        return proxy_id in self._proxies

    def __len__(self) -> int:
        return len(self._proxies)

    # -- compiled snapshots --------------------------------------------------------------------

    def publish(
        self,
        compiled: Mapping[str, tuple[Snapshot, str]],
        *,
        revision: int,
        changed_at: float,
        now: float,
    ) -> list[str]:
        """Install newly compiled snapshots; the ids whose snapshot changed (hash or version).

        Ids not registered are ignored. A proxy whose first snapshot this is does not join
        the rollout (it converges by registering, not by this change).
        """
        changed: list[str] = []
        rollout: set[str] = set()
        for pid, (snapshot, digest) in compiled.items():
            state = self._proxies.get(pid)
            if state is None:
                continue
            latest = state.latest
            if latest is not None and latest.hash == digest:
                if state.stale:
                    state.stale = False
                    changed.append(pid)
                continue
            state.stale = False
            runs_it = digest == state.acked_hash and state.acked_version is not None
            if runs_it:
                assert state.acked_version is not None
                version = state.acked_version
            else:
                previous = max(
                    latest.version if latest is not None else 0, state.acked_version or 0
                )
                version = next_version(previous, now)
            state.latest = Compiled(version, digest, snapshot, now, acked=runs_it)
            if runs_it:
                state.acked = state.latest
            changed.append(pid)
            if runs_it:
                self._acked(pid, now)  # back to what it runs: older rollouts are done for it
            elif latest is not None:
                rollout.add(pid)
        if rollout:
            self._start_rollout(revision, changed_at, rollout)
        return changed

    def _start_rollout(self, revision: int, changed_at: float, pending: set[str]) -> None:
        self._rollout_seq += 1
        seq = self._rollout_seq
        self._rollouts[seq] = _Rollout(revision, changed_at, pending)
        for pid in pending:
            self._pending_in.setdefault(pid, set()).add(seq)
        while len(self._rollouts) > MAX_ROLLOUTS:
            old_seq, old = self._rollouts.popitem(last=False)
            for pid in old.pending:
                self._discard_pending(pid, old_seq)

    # -- sidecar exchanges ---------------------------------------------------------------------

    def observe_poll(
        self,
        proxy_id: str,
        *,
        version: int | None,
        hash: str | None,
        wait_s: float,
        now: float,
        features: str | None = None,
    ) -> ProxyState:
        """Record a poll's report (the ACK of what it runs) and the features it declares
        (its features header; None: none); raises :class:`UnknownProxy`."""
        state = self.get(proxy_id)
        state.last_contact = now
        state.last_wait_s = wait_s
        state.declare(features)
        if hash is None or version is None:
            # A sidecar that reports nothing runs nothing: a new process of it (a restart)
            # no longer runs what the old one ACKed, so the latest snapshot is due again.
            state.acked_version = state.acked_hash = None
            return state
        state.acked_version = version
        state.acked_hash = hash
        latest = state.latest
        if latest is not None and latest.hash == hash:
            state.acked = latest
        elif state.acked is not None and state.acked.hash != hash:
            state.acked = None
        if latest is None or latest.hash != hash or latest.acked:
            return state
        if latest.version != version:
            # Compiled before the sidecar (re)appeared, which runs it under its own version:
            # adopt that (nothing was pushed, so no latency to report).
            latest = state.latest = state.acked = latest.with_version(version)
        else:
            self._observer.acked(max(0.0, now - latest.compiled_at))
        latest.acked = True
        self._acked(proxy_id, now)
        return state

    def _acked(self, proxy_id: str, now: float) -> None:
        seqs = self._pending_in.pop(proxy_id, None)
        if not seqs:
            return
        for seq in seqs:
            rollout = self._rollouts.get(seq)
            if rollout is None:
                continue
            rollout.pending.discard(proxy_id)
            if not rollout.pending:
                del self._rollouts[seq]
                if not rollout.nacked:
                    self._observer.converged(max(0.0, now - rollout.changed_at))

    def take(self, proxy_id: str) -> Compiled | None:
        """The snapshot to answer a poll with now (counted as a push), or None to wait."""
        compiled = self.get(proxy_id).pending()
        if compiled is not None:
            self._observer.pushed()
        return compiled

    def nack(self, proxy_id: str, *, version: int, hash: str, error: str, now: float) -> None:
        """Record a sidecar's rejection; raises :class:`UnknownProxy`."""
        state = self.get(proxy_id)
        state.nack = NackRecord(version, hash, error, now)
        state.nacked_hash = hash
        state.last_contact = now
        self._observer.nacked()
        latest = state.latest
        if latest is not None and latest.hash == hash:
            self._drop_pending(proxy_id, nacked=True)

    def _drop_pending(self, proxy_id: str, *, nacked: bool) -> None:
        for seq in self._pending_in.pop(proxy_id, ()):
            rollout = self._rollouts.get(seq)
            if rollout is None:
                continue
            rollout.pending.discard(proxy_id)
            rollout.nacked |= nacked
            if not rollout.pending:
                # Ended by a NACK or by sidecars leaving: not a convergence to report.
                del self._rollouts[seq]

    def _discard_pending(self, proxy_id: str, seq: int) -> None:
        seqs = self._pending_in.get(proxy_id)
        if seqs is not None:
            seqs.discard(seq)
            if not seqs:
                del self._pending_in[proxy_id]

    # -- reporting -----------------------------------------------------------------------------

    def rollouts_pending(self) -> int:
        """Rollouts still waiting for ACKs."""
        return len(self._rollouts)

    def connected_count(self, now: float) -> int:
        """Sidecars with a poll parked now or recently."""
        return sum(1 for state in self._proxies.values() if state.connected(now))

    def statuses(self, now: float) -> list[ProxyStatus]:
        """One row per registered sidecar, sorted by proxy id."""
        return [proxy_status(pid, self._proxies[pid], now) for pid in sorted(self._proxies)]

    def states(self) -> Iterable[tuple[str, ProxyState]]:
        """Registered sidecars' states (read-only use)."""
        return self._proxies.items()

    def sidecars(self, now: float) -> list[SidecarInfo]:
        """Every registered sidecar's features and ACKed snapshot, sorted by proxy id."""
        out = []
        for pid in sorted(self._proxies):
            state = self._proxies[pid]
            acked = state.acked
            latest = state.latest
            out.append(
                SidecarInfo(
                    proxy_id=pid,
                    descriptor=state.descriptor,
                    connected=state.connected(now),
                    features=state.features,
                    acked_version=state.acked_version,
                    acked_snapshot=None if acked is None else acked.snapshot,
                    latest_version=None if latest is None else latest.version,
                    latest_snapshot=None if latest is None else latest.snapshot,
                )
            )
        return out
