"""examples/policy/ holds together as one set and compiles to what its comments say."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler.builders import ep, proxy, view
from controld.compiler import compile_snapshot, validate_resources
from meshcore.model.documents import load_paths
from meshcore.model.resources import ResourceSet

pytestmark = pytest.mark.timeout(60)

EXAMPLES = Path(__file__).resolve().parents[4] / "examples" / "policy"


def _resources() -> ResourceSet:
    return ResourceSet.of(tuple(r for _path, r in load_paths([EXAMPLES])), revision=1)


def test_the_examples_are_one_valid_set() -> None:
    assert validate_resources(_resources()) == []


def test_the_resilience_example_reaches_the_snapshot() -> None:
    endpoints = view(
        {
            "orders": [ep("10.0.0.1", zone="a"), ep("10.0.0.2", zone="b")],
            "orders-dr": [ep("10.1.0.1")],
        }
    )
    snap = compile_snapshot(endpoints, _resources(), proxy("web-1", "web", ["orders"]))
    orders = snap.cluster("orders")
    assert orders is not None
    assert orders.lb_policy == "ewma"
    assert orders.locality is not None and orders.panic_threshold_percent == 30
    assert orders.retry_budget.min_retries_per_second == 5
    assert orders.limits is not None and orders.limits.max_retries == 16
    assert orders.outlier_detection is not None
    assert orders.outlier_detection.success_rate is not None
    assert orders.health_check is not None and orders.health_check.path == "/healthz"
    assert [(e.host, e.priority, e.zone) for e in orders.endpoints] == [
        ("10.0.0.1", 0, "a"),
        ("10.0.0.2", 0, "b"),
        ("10.1.0.1", 1, None),
    ]
    table = snap.route_table("orders")
    assert table is not None
    reads, writes, _default = table.routes
    assert reads.retries is not None and reads.retries.retriable_status_codes == (429,)
    assert writes.retries is not None and writes.retries.retry_on == ("connect-failure",)
