"""``meshctl status``, ``token create`` and ``schema`` (``explain`` is :mod:`tui.cli.explain`)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from typing import Any

from meshcore.api.proxies import ProxyState
from meshcore.api.status import StatusAnswer
from tui import render
from tui.cli.common import EXIT_FAILED, EXIT_OK, Options, error
from tui.cli.kinds import UnknownKind, resolve_kind

__all__ = [
    "cmd_schema",
    "cmd_status",
    "cmd_token_create",
    "endpoint_mix_lines",
    "feature_cells",
    "mix_lines",
    "parse_duration",
    "proxy_rows",
    "proxy_state",
    "status_header",
    "version_text",
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
                version_text(p.acked_version),
                version_text(p.latest_version),
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


def version_text(value: object) -> str:
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
