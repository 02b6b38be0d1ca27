"""Human lines for a cluster's settings in ``meshctl explain`` (the ``settings`` object of
``POST /v1/explain``'s clusters): balancing, retry budget, breakers, outlier detection and
health check, one line each, only for what is set."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["cluster_settings_lines"]


def _num(value: Any) -> str:
    """``5`` for 5.0, ``0.5`` for 0.5; other values as they are."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _balancing(s: Mapping[str, Any]) -> str:
    text = f"balancing: {s.get('lb_policy', 'round_robin')}"
    hashing = s.get("hash_policy")
    if isinstance(hashing, Mapping):
        if hashing.get("header"):
            text += f" on header {hashing['header']}"
        elif hashing.get("cookie"):
            text += f" on cookie {hashing['cookie']}"
        elif hashing.get("source_ip"):
            text += " on source address"
    locality = s.get("locality")
    if isinstance(locality, Mapping):
        text += f", own zone first while >= {_num(locality.get('min_healthy_percent'))}% healthy"
    else:
        text += ", any zone"
    if s.get("panic_threshold_percent") is not None:
        text += f", panic below {_num(s['panic_threshold_percent'])}% healthy"
    if s.get("connect_timeout_s") is not None:
        text += f", connect timeout {_num(s['connect_timeout_s'])}s"
    return text


def _budget(b: Mapping[str, Any]) -> str:
    return (
        f"retry budget: {_num(b.get('percent'))}% of requests"
        f" + {_num(b.get('min_retries_per_second'))}/s (over {_num(b.get('ttl_s'))}s)"
    )


def _limits(lim: Mapping[str, Any]) -> str:
    return (
        f"limits (this sidecar, whole cluster): connections {lim.get('max_connections')},"
        f" pending {lim.get('max_pending_requests')}, requests {lim.get('max_requests')},"
        f" retries {lim.get('max_retries')}"
    )


def _outlier(o: Mapping[str, Any]) -> str:
    text = (
        f"outlier detection: eject after {o.get('consecutive_5xx')} x 5xx,"
        f" {o.get('consecutive_gateway_errors')} x gateway error,"
        f" {o.get('consecutive_local_origin_failures')} x local-origin failure;"
        f" {_num(o.get('base_ejection_s'))}s per ejection up to {_num(o.get('max_ejection_s'))}s,"
        f" at most {o.get('max_ejection_percent')}% ejected, every {_num(o.get('interval_s'))}s"
    )
    rate = o.get("success_rate")
    if isinstance(rate, Mapping):
        text += (
            f"; success rate below mean - {_num(rate.get('stdev_factor'))} stdev"
            f" ({rate.get('minimum_hosts')}+ endpoints with {rate.get('request_volume')}+"
            " requests)"
        )
    return text


def _health(h: Mapping[str, Any]) -> str:
    kind = h.get("kind", "http")
    what = f"http GET {h.get('path', '/')}" if kind == "http" else "tcp connect"
    return (
        f"health check: {what} every {_num(h.get('interval_s'))}s,"
        f" timeout {_num(h.get('timeout_s'))}s, down after {h.get('unhealthy_threshold')}"
        f" failures, up after {h.get('healthy_threshold')} successes"
    )


def cluster_settings_lines(settings: Mapping[str, Any] | None, indent: str) -> list[str]:
    """One line per setting group of a cluster; nothing when ``settings`` is missing."""
    if not isinstance(settings, Mapping) or not settings:
        return []
    lines = [_balancing(settings)]
    budget = settings.get("retry_budget")
    if isinstance(budget, Mapping):
        lines.append(_budget(budget))
    parts = (("limits", _limits), ("outlier_detection", _outlier), ("health_check", _health))
    for key, render in parts:
        value = settings.get(key)
        if isinstance(value, Mapping):
            lines.append(render(value))
    return [f"{indent}{line}" for line in lines]
