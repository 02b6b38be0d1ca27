"""The policy metrics: declared once, recorded by name, exported at scrape time."""

from __future__ import annotations

import pytest

from meshd.metrics import MetricsView
from meshd.stats import Stats

pytestmark = pytest.mark.timeout(30)


def test_counters_and_gauges_reach_the_scrape() -> None:
    stats = Stats()
    stats.policy.inc("meshd_upstream_retries", "api", "reset")
    stats.policy.inc("meshd_upstream_retries", "api", "reset")
    stats.policy.set("meshd_outlier_ejected_endpoints", "api", value=1)
    text = MetricsView(stats).render().decode()
    assert 'meshd_upstream_retries_total{cluster="api",reason="reset"} 2.0' in text
    assert 'meshd_outlier_ejected_endpoints{cluster="api"} 1.0' in text
    assert stats.policy.value("meshd_upstream_retries", "api", "reset") == 2


def test_undeclared_names_and_wrong_labels_raise() -> None:
    stats = Stats()
    with pytest.raises(KeyError):
        stats.policy.inc("meshd_nonsense")
    with pytest.raises(ValueError, match="takes labels"):
        stats.policy.inc("meshd_upstream_retries", "api")
