"""``meshctl explain``: what controld decided for a request, as text."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from meshcore.api.explain import (
    ExplainAnswer,
    ExplainCluster,
    ExplainEndpoint,
    FeatureUse,
    SidecarEnforcement,
)
from tui import render
from tui.cli.clustertext import cluster_settings_lines
from tui.cli.common import EXIT_OK, EXIT_USAGE, Options, error
from tui.cli.ops import mix_lines, version_text
from tui.client import ApiError

__all__ = [
    "cmd_explain",
    "explain_lines",
    "route_rule_match",
    "sidecar_lines",
]


def _headers(values: Sequence[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for value in values:
        name, sep, content = value.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--header expects NAME=VALUE, got {value!r}")
        headers[name.strip().lower()] = content
    return headers


def _endpoint(ep: ExplainEndpoint) -> str:
    text = f"{ep.host}:{ep.port} [{'mTLS' if ep.tls == 'mtls' else ep.tls}]"
    if ep.zone:
        text += f" zone {ep.zone}"
    if ep.priority:
        text += f" (failover {ep.priority})"
    return text


def _compact(value: Any) -> str:
    """A one-line rendering of a small JSON value (match conditions, redirects)."""
    return json.dumps(value, separators=(", ", ": "), sort_keys=False)


def _pruned(value: Any) -> Any:
    """``value`` without ``None``s and empty lists/mappings (unset match conditions)."""
    if isinstance(value, Mapping):
        items = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in items.items() if v not in (None, [], {})}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def _cluster_lines(cluster: ExplainCluster | None) -> list[str]:
    if cluster is None:
        return []
    where = f"service {cluster.service}" + (f", subset {cluster.subset}" if cluster.subset else "")
    if cluster.lb_policy:
        where += f", {cluster.lb_policy}"
    lines = [f"      cluster {cluster.name}: {where}"]
    shown = ", ".join(_endpoint(e) for e in cluster.endpoints) or "(none)"
    lines.append(f"      endpoints: {shown}")
    lines += mix_lines(cluster.mix.model_dump(mode="json"), "      ")
    lines += cluster_settings_lines(cluster.settings, "      ")
    return lines


def route_rule_match(
    routes: Sequence[Mapping[str, Any]], destination: str, route: str
) -> Any | None:
    """The ``match`` of the HTTPRoute rule of ``destination`` the compiler named ``route``.

    The compiler names rules by their ``name``, else ``rule-<index>``.
    """
    for res in routes:
        spec = res.get("spec") or {}
        if res.get("kind") != "HTTPRoute" or spec.get("service") != destination:
            continue
        for index, rule in enumerate(spec.get("rules") or ()):
            if (rule.get("name") or f"rule-{index}") == route:
                return _pruned(rule.get("match") or {})
    return None


def explain_lines(
    explanation: ExplainAnswer, routes: Sequence[Mapping[str, Any]] = ()
) -> list[str]:
    """A human reading of ``POST /v1/explain``'s answer.

    ``routes`` (the HTTPRoute resources, optional) supply the match of the rule that matched.
    """
    ex = explanation
    dst = ex.destination
    lines = [f"{ex.source} -> {dst}  {ex.method} {ex.path}".rstrip()]
    if ex.source_id:
        lines.append(f"source identity: {ex.source_id}")
    facts = [
        f"{key} {value}"
        for key, value in (("protocol", ex.protocol), ("listener", ex.listener), ("mtls", ex.mtls))
        if value
    ]
    if facts:
        lines.append(", ".join(facts))
    if ex.route is not None:
        text = f"route: {ex.route}"
        if ex.timeout_s is not None:
            text += f" (timeout {ex.timeout_s:g}s)"
        lines.append(text)
        match = route_rule_match(routes, dst, ex.route)
        if match is not None:
            lines.append(f"  matched: {_compact(match) if match else 'any request'}")
        elif ex.route in ("default", "mesh-default"):
            lines.append("  matched: no rule of the HTTPRoute did; catch-all to the whole service")
    elif ex.protocol != "tcp":
        lines.append("route: none matched")
    lines += [f"  {name}: {_compact(value)}" for name, value in ex.route_policy.items()]
    if ex.redirect:
        lines.append(f"redirect: {_compact(ex.redirect)}" + _lacking(ex, "route.redirect"))
    clusters = {c.name: c for c in ex.clusters}
    if ex.backends or ex.route is not None:
        lines.append("backends:" if ex.backends else "backends: (none)")
        for b in ex.backends:
            lines.append(f"  - {b.cluster}  {b.percent:g}% (weight {b.weight})")
            lines += _cluster_lines(clusters.get(b.cluster))
    elif ex.protocol == "tcp":
        for name, cluster in clusters.items():
            lines.append(f"  - {name}")
            lines += _cluster_lines(cluster)
    if ex.mirror is not None:
        lines.append(
            f"mirror: {ex.mirror.cluster} {ex.mirror.percent:g}%" + _lacking(ex, "route.mirror")
        )
        lines += _cluster_lines(clusters.get(ex.mirror.cluster))
    access = ex.access
    text = f"access: {access.action.upper()}"
    if access.rule_index is not None:
        text += f" (rule {access.rule_index}"
        text += f" of AccessPolicy/{access.policy})" if access.policy else ")"
    if access.reason:
        text += f": {access.reason}"
    lines.append(text)
    if ex.rate_limits:
        lines.append("rate limits: " + ", ".join(ex.rate_limits) + _lacking(ex, "rate_limits"))
    lines += sidecar_lines(ex.sidecars)
    lines += [f"note: {note}" for note in ex.notes]
    return lines


def _lacking(explanation: ExplainAnswer, feature: str) -> str:
    """``  (NOT ENFORCED by web-1, web-2)`` when sidecars of the path lack ``feature``."""
    pids = [
        s.proxy_id
        for s in explanation.sidecars
        if any(u.feature == feature for u in s.not_enforced)
    ]
    return f"  (NOT ENFORCED by {', '.join(pids)})" if pids else ""


def _uses(items: Sequence[FeatureUse]) -> str:
    return ", ".join(f"{u.feature} ({u.path})" for u in items)


def sidecar_lines(sidecars: Sequence[SidecarEnforcement]) -> list[str]:
    """What each sidecar of the request's path enforces, from the snapshot it ACKed, and the
    features of the current policy it lacks (``NOT ENFORCED by <proxy>``)."""
    lines: list[str] = []
    for sidecar in sidecars:
        pid = sidecar.proxy_id
        acked, latest = sidecar.acked_version, sidecar.latest_version
        head = f"sidecar {pid} ({sidecar.role}): runs version {version_text(acked)}"
        if latest is not None and latest != acked:
            head += f" (latest {latest} not ACKed)"
        head += (
            f", declares {sidecar.features} features"
            if sidecar.features is not None
            else ", declares no features (older meshd: unknown)"
        )
        if not sidecar.connected:
            head += ", not connected"
        lines.append(head)
        lines.append(f"  enforces: {_uses(sidecar.enforces) or '-'}")
        lines += [f"  {_uses((u,))}: NOT ENFORCED by {pid}" for u in sidecar.not_enforced]
    return lines


def cmd_explain(opts: Options, args: argparse.Namespace) -> int:
    """``POST /v1/explain``: how a request from SOURCE to DESTINATION would be handled."""
    try:
        headers = _headers(args.header)
    except ValueError as exc:
        error(str(exc))
        return EXIT_USAGE
    routes: list[Mapping[str, Any]] = []
    with opts.client() as client:
        answer = client.explain(
            args.source, args.destination, method=args.method, path=args.path, headers=headers
        )
        if opts.output == "table" and answer.route is not None:
            # A sidecar token may explain but not list; the match is optional.
            with contextlib.suppress(ApiError):
                routes = list(client.list_resources("HTTPRoute").resources)
    if opts.output == "json":
        print(render.to_json(answer))
    elif opts.output == "yaml":
        print(render.to_yaml(answer), end="")
    else:
        print("\n".join(explain_lines(answer, routes)))
    return EXIT_OK
