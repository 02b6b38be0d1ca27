"""The telemetry reporter: a report to controld about once a second, taps back.

``POST /v1/telemetry/{proxy_id}`` goes over its own keep-alive connection to the controld the
snapshot source follows (same URL, token and TLS: :meth:`ControlSource.side_client`), never
the long-poll's. A report that fails is dropped (its deltas are lost, counted in
``meshd_telemetry_reports_total{result="failed"}``); the next one starts from the new
baseline. The answer lists the active taps: the sampler is installed on the request path only
while one is active.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import structlog
import trio
from pydantic import ValidationError

from meshcore.api.report import TelemetryAck, telemetry_path
from meshd.context import ProxyShared
from meshd.control.client import ControlClient, ControlError, path_segment
from meshd.policystats import PolicyStats
from meshd.telemetry.delta import ClusterFacts, ReportBuilder
from meshd.telemetry.tap import TapSampler

__all__ = ["TelemetryReporter"]

log = structlog.get_logger("meshd.telemetry")


class TelemetryReporter:
    """Posts a telemetry report every ``interval_s`` (a service object)."""

    def __init__(
        self,
        *,
        builder: ReportBuilder,
        proxy_id: str,
        shared: ProxyShared,
        client: Callable[[], ControlClient | None],
        facts: Callable[[], ClusterFacts],
        cert_not_after: Callable[[], float | None],
        ejected: Callable[[], Iterable[str]],
        policy: PolicyStats,
        interval_s: float = 1.0,
    ) -> None:
        self.builder = builder
        self.sampler = TapSampler()
        self._path = telemetry_path(path_segment(proxy_id))
        self._shared = shared
        self._client = client
        self._facts = facts
        self._cert = cert_not_after
        self._ejected = ejected
        self._policy = policy
        self.interval_s = interval_s
        self._failing = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Report until cancelled."""
        task_status.started()
        try:
            while True:
                await trio.sleep(self.interval_s)
                await self.report_once()
        finally:
            self._shared.tap = None

    async def report_once(self) -> bool:
        """Build and send one report; apply the taps of the answer. False when it failed."""
        report = self.builder.build(
            self._facts(),
            cert_not_after=self._cert(),
            ejected=self._ejected(),
            tap_events=self.sampler.take_events(),
        )
        client = self._client()
        if client is None:
            return False  # no token yet (the identity is still enrolling)
        try:
            # Encoded by pydantic-core in one pass (the tap's events too): a third of the
            # time of model_dump + json.dumps.
            body = report.model_dump_json().encode()
            answer = await client.request("POST", self._path, body)
            if not 200 <= answer.status < 300:
                raise ControlError(answer.error_text())
            ack = TelemetryAck.model_validate_json(answer.body)
        except (ControlError, ValidationError) as exc:
            self._policy.inc("meshd_telemetry_reports", "failed")
            if not self._failing:
                self._failing = True
                log.warning("telemetry report failed", error=str(exc).splitlines()[0])
            # Without news about taps, none stays active past its end.
            self._apply_taps(None)
            return False
        self._policy.inc("meshd_telemetry_reports", "sent")
        self._failing = False
        self._apply_taps(ack)
        return True

    def _apply_taps(self, ack: TelemetryAck | None) -> None:
        if ack is not None:
            self.sampler.set_taps(ack.taps)
        self._shared.tap = self.sampler if self.sampler.active else None
