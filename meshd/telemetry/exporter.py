"""The span recorder (on the request path, sampled traces only) and the OTLP/HTTP exporter.

:class:`SpanRecorder` turns a sampled exchange into a :class:`~meshd.telemetry.otlp.Span` and
appends it to a bounded queue; a full queue drops the span and counts it. :class:`SpanExporter`
(a service object) sends the queue in batches of at most ``max_batch`` spans, every
``export_interval_s``, with a time limit per request; a failed batch is dropped and counted,
never retried, so an unreachable collector costs the proxy a bounded queue and a connect
attempt per interval, and the requests nothing.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import structlog
import trio

from meshcore import __version__
from meshcore.model.bootstrap import TracingConfig
from meshd.context import ExchangeRecord
from meshd.control.client import ControlClient, ControlError
from meshd.policystats import PolicyStats
from meshd.telemetry.otlp import Attribute, Span, encode_spans, span_from_record

__all__ = ["TRACES_PATH", "SpanExporter", "SpanRecorder"]

log = structlog.get_logger("meshd.tracing")

#: OTLP/HTTP traces path, appended to ``tracing.otlp_endpoint``.
TRACES_PATH = "/v1/traces"


class SpanRecorder:
    """Bounded span queue (a :class:`~meshd.context.RequestObserver`)."""

    def __init__(
        self,
        service: str,
        stats: PolicyStats,
        *,
        max_queue: int,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._service = service
        self._stats = stats
        self._wall = wall
        self.queue: deque[Span] = deque()
        self.max_queue = max_queue

    def observe(self, record: ExchangeRecord) -> None:
        """Queue the span of ``record`` (dropped and counted when the queue is full)."""
        if len(self.queue) >= self.max_queue:
            self._stats.inc("meshd_trace_spans", "dropped")
            return
        span = span_from_record(record, end_wall=self._wall(), service=self._service)
        if span is not None:
            self.queue.append(span)

    def take(self, limit: int) -> list[Span]:
        """Up to ``limit`` queued spans, oldest first."""
        n = min(limit, len(self.queue))
        return [self.queue.popleft() for _ in range(n)]


class SpanExporter:
    """Sends recorded spans to the OTLP/HTTP collector in batches (a service object)."""

    def __init__(
        self,
        config: TracingConfig,
        *,
        service: str,
        proxy_id: str,
        stats: PolicyStats,
    ) -> None:
        self.config = config
        self.recorder = SpanRecorder(service, stats, max_queue=config.max_queue)
        self._stats = stats
        self._resource: list[Attribute] = [
            ("service.name", service),
            ("service.instance.id", proxy_id),
            ("telemetry.sdk.name", "meshd"),
        ]
        self._client = ControlClient(
            config.otlp_endpoint,
            timeout_s=config.timeout_s,
            user_agent=f"meshd/{__version__}",
            field="tracing.otlp_endpoint",
        )
        self._failing = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Export every ``export_interval_s`` until cancelled."""
        task_status.started()
        try:
            while True:
                await trio.sleep(self.config.export_interval_s)
                while self.recorder.queue:
                    if not await self.export_once():
                        break
        finally:
            self._client.close()

    async def export_once(self) -> bool:
        """Send one batch; False when it failed (its spans are dropped and counted)."""
        batch = self.recorder.take(self.config.max_batch)
        if not batch:
            return True
        doc = encode_spans(batch, resource=self._resource, scope_version=__version__)
        try:
            answer = await self._client.post_json(TRACES_PATH, doc)
        except ControlError as exc:
            self._failed(len(batch), str(exc))
            return False
        if not 200 <= answer.status < 300:
            self._failed(len(batch), answer.error_text())
            return False
        self._stats.inc("meshd_trace_spans", "exported", n=len(batch))
        if self._failing:
            self._failing = False
            log.info("trace collector reachable again", url=self.config.otlp_endpoint)
        return True

    def _failed(self, count: int, error: str) -> None:
        self._stats.inc("meshd_trace_spans", "failed", n=count)
        if not self._failing:
            self._failing = True
            log.warning(
                "trace export failed, dropping spans",
                url=self.config.otlp_endpoint,
                error=error,
                spans=count,
            )
