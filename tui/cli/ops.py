"""``meshctl status``, ``explain``, ``token create`` and ``schema``."""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from meshcore.api.explain import (
    ExplainAnswer,
    ExplainCluster,
    ExplainEndpoint,
    FeatureUse,
    SidecarEnforcement,
)
from meshcore.api.proxies import ProxyState
from meshcore.api.status import StatusAnswer
from tui import render
from tui.cli.clustertext import cluster_settings_lines
from tui.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Options, error
from tui.cli.kinds import UnknownKind, resolve_kind
from tui.client import ApiError

__all__ = [
    "cmd_explain",
    "cmd_schema",
    "cmd_status",
    "cmd_token_create",
    "endpoint_mix_lines",
    "explain_lines",
    "feature_cells",
    "mix_lines",
    "parse_duration",
    "proxy_rows",
    "proxy_state",
    "route_rule_match",
    "sidecar_lines",
    "status_header",
]

PROXY_HEADERS = [
    "PROXY",
    "SERVICE",
    "CONNECTED",
    "ACKED VERSION",
    "LATEST VERSION",
    "STATE",
    "FEATURES",
    "UNSUPPORTED IN USE",
    "LAST CONTACT",
]


def proxy_state(proxy: ProxyState) -> str:
    """``synced``, ``pending`` or ``NACKED: <first line of the error>``."""
    latest_version = proxy.latest_version
    latest_hash = proxy.latest_hash
    nack = proxy.nack
    if nack is not None:
        nacked_latest = nack.version == latest_version or (
            latest_hash is not None and nack.hash == latest_hash
        )
        if nacked_latest or latest_version is None:
            lines = nack.error.strip().splitlines()
            return f"NACKED: {lines[0] if lines else '(no reason given)'}"
    if latest_version is None and latest_hash is None:
        return "pending"
    if latest_hash is not None and proxy.acked_hash is not None:
        synced = proxy.acked_hash == latest_hash
    else:
        synced = proxy.acked_version == latest_version
    return "synced" if synced else "pending"


def proxy_rows(proxies: Sequence[ProxyState], now: float) -> list[list[str]]:
    """Rows of the ``status`` table, sorted by service and proxy id."""
    rows = []
    for p in proxies:
        last = p.last_contact
        rows.append(
            [
                p.proxy_id,
                p.service,
                "yes" if p.connected else "no",
                _version(p.acked_version),
                _version(p.latest_version),
                proxy_state(p),
                *feature_cells(p),
                "-" if last is None else render.age(now - last),
            ]
        )
    rows.sort(key=lambda r: (r[1], r[0]))
    return rows


def feature_cells(proxy: ProxyState) -> tuple[str, str]:
    """``FEATURES`` (how many the sidecar declares; ``?``: it declares none, an older meshd)
    and ``UNSUPPORTED IN USE`` (features its latest snapshot uses that it doesn't declare)."""
    count = "?" if proxy.features is None else str(len(proxy.features))
    missing = [u.feature for u in proxy.unsupported if u.feature]
    return count, ",".join(missing) or "-"


def _version(value: object) -> str:
    return "-" if value is None else str(value)


def status_header(status: StatusAnswer, proxies: int) -> str:
    """``registry: embedded (connected)   resources: revision 7   sidecars: 3``."""
    registry = status.registry
    state = "connected" if registry.connected else "DISCONNECTED"
    parts = [f"registry: {registry.mode} ({state})"]
    store = status.store
    revision = None if store is None else store.revision
    count = None if store is None else store.resources
    text = f"resources: revision {'-' if revision is None else revision}"
    if count is not None:
        text += f" ({count} resource{'' if count == 1 else 's'})"
    if store is not None and not store.connected:
        text += " STORE DISCONNECTED"
    parts.append(text)
    parts.append(f"sidecars: {proxies}")
    return "   ".join(parts)


def cmd_status(opts: Options, _: argparse.Namespace) -> int:
    """Per-sidecar sync state from ``/v1/proxies`` under a line from ``/v1/status``."""
    with opts.client() as client:
        status = client.status()
        proxies = client.proxies().proxies
    if opts.output != "table":
        value = {"status": status, "proxies": proxies}
        print(render.to_json(value) if opts.output == "json" else render.to_yaml(value), end="")
        if opts.output == "json":
            print()
        return EXIT_OK
    print(status_header(status, len(proxies)))
    if proxies:
        print()
        print(render.table(PROXY_HEADERS, proxy_rows(proxies, time.time())))
    if status.endpoint_mix:
        print()
        print("\n".join(endpoint_mix_lines(status.endpoint_mix)))
    return EXIT_OK


def endpoint_mix_lines(mixed: Mapping[str, Any]) -> list[str]:
    """The ``status`` section on services with plain (no sidecar) endpoints."""
    lines = ["services with plain endpoints (TLS is decided per endpoint):"]
    for service, mix in mixed.items():
        mode = mix.get("mtls_mode", "?") if isinstance(mix, Mapping) else "?"
        lines.append(f"  {service} (mTLS {str(mode).upper()})")
        lines += mix_lines(mix, "    ")
    return lines


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


def mix_lines(mix: Mapping[str, Any] | None, indent: str) -> list[str]:
    """The endpoint mix of a cluster or service (sidecar vs plain endpoints, how many go
    over mTLS and plaintext, the excluded ones and why); nothing when every endpoint is a
    sidecar and none is excluded."""
    if not isinstance(mix, Mapping) or (not mix.get("plain") and not mix.get("excluded")):
        return []
    lines = [
        f"{indent}mix: {mix.get('sidecar', 0)} sidecar, {mix.get('plain', 0)} plain "
        f"({mix.get('mtls', 0)} mTLS, {mix.get('plaintext', 0)} plaintext, "
        f"{len(mix.get('excluded') or ())} excluded)"
    ]
    for left_out in mix.get("excluded") or ():
        lines.append(
            f"{indent}excluded: {left_out.get('host', '?')}:{left_out.get('port', '?')}"
            f" ({left_out.get('service', '?')}): {left_out.get('reason', '')}"
        )
    return lines


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
        head = f"sidecar {pid} ({sidecar.role}): runs version {_version(acked)}"
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


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """``90``, ``90s``, ``30m``, ``1h``, ``2d`` -> whole seconds (>= 1); ``ArgumentTypeError``
    otherwise (argparse's ``type=``)."""
    value = text.strip().lower()
    scale = _UNITS.get(value[-1:], 0)
    number = value[:-1] if scale else value
    scale = scale or 1
    if not (number.isascii() and number.isdigit()) or int(number) * scale < 1:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (e.g. 90s, 30m, 1h, 2d)")
    return int(number) * scale


def cmd_token_create(opts: Options, args: argparse.Namespace) -> int:
    """``token create --service S [--namespace NS] [--ttl 1h]``: print a join token."""
    with opts.client() as client:
        print(client.join_token(args.service, namespace=args.namespace, ttl_s=args.ttl).token)
    return EXIT_OK


def cmd_token_registry(opts: Options, args: argparse.Namespace) -> int:
    """``token registry --service S [--ttl D]``: print a registry token's SecretID."""
    with opts.client() as client:
        print(client.registry_token(args.service, ttl_s=args.ttl).secret_id)
    return EXIT_OK


def cmd_schema(opts: Options, args: argparse.Namespace) -> int:
    """``schema [KIND]``: JSON Schemas of the resource kinds controld accepts."""
    with opts.client() as client:
        schemas = client.schema()
    value: Any = schemas
    if args.kind:
        try:
            kind = resolve_kind(args.kind, list(schemas))
        except UnknownKind as exc:
            error(str(exc))
            return EXIT_FAILED
        value = schemas[kind]
    if opts.output == "yaml":
        print(render.to_yaml(value), end="")
    else:
        print(render.to_json(value))
    return EXIT_OK
