"""``meshctl apply``, ``get``, ``delete`` and ``diff``: policy resources in controld."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from meshcore.api.resources import ApplyAnswer, ResourceList
from meshcore.errors import ConfigError
from tui import render
from tui.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Options, error
from tui.cli.kinds import resolve_kind
from tui.cli.local import LocalResource, load_local, normalized, problem_lines
from tui.client import ApiError, ControldClient

__all__ = [
    "apply_lines",
    "cmd_apply",
    "cmd_delete",
    "cmd_diff",
    "cmd_get",
    "diff_resource",
    "resource_rows",
    "warning_lines",
]


def _load(sources: Sequence[str]) -> list[LocalResource] | None:
    """Parse the files; print the problems and return ``None`` if any."""
    try:
        return load_local(sources)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def apply_lines(
    keys: Sequence[tuple[str, str]], answer: ApplyAnswer, *, dry_run: bool
) -> list[str]:
    """``HTTPRoute/api-split created|updated|unchanged`` per resource sent, then the revision."""
    actions = {(c.kind, c.name): c.action for c in answer.changes}
    suffix = " (dry run)" if dry_run else ""
    lines = [
        f"{kind}/{name} {actions.pop((kind, name), 'unchanged')}{suffix}" for kind, name in keys
    ]
    # Changes controld reports beyond what was sent (shouldn't happen, but don't hide them).
    lines += [f"{kind}/{name} {action}{suffix}" for (kind, name), action in actions.items()]
    lines.append(f"revision {answer.revision}")
    return lines


def cmd_apply(opts: Options, args: argparse.Namespace) -> int:
    """Parse locally (nothing is sent if that fails), then ``PUT /v1/resources``."""
    local = _load(args.filename)
    if local is None:
        return EXIT_FAILED
    if not local:
        error("no resources in " + ", ".join(args.filename))
        return EXIT_FAILED
    with opts.client() as client:
        try:
            answer = client.apply(
                [r.body for r in local], dry_run=args.dry_run, strict=getattr(args, "strict", False)
            )
        except ApiError as exc:
            if not exc.problems:
                raise
            print(f"meshctl: controld rejected the resources ({exc.message}):", file=sys.stderr)
            for line in problem_lines(exc.problems, [r.origin for r in local]):
                print(line, file=sys.stderr)
            return EXIT_FAILED
    for line in warning_lines(answer):
        print(line, file=sys.stderr)
    if opts.output != "table":
        _dump(opts, answer)
        return EXIT_OK
    print("\n".join(apply_lines([r.key for r in local], answer, dry_run=args.dry_run)))
    return EXIT_OK


def warning_lines(answer: ApplyAnswer) -> list[str]:
    """One ``warning:`` line per connected sidecar that would get a snapshot feature it
    doesn't enforce (it will NACK that snapshot and keep its current one)."""
    return [f"warning: {w.message}" for w in answer.warnings]


def resource_rows(resources: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Table rows ``KIND, NAME, REVISION, LABELS`` sorted by kind and name."""
    rows = []
    for res in resources:
        meta = res.get("metadata") or {}
        server_meta = res.get("meta") or {}
        labels = meta.get("labels") or {}
        revision = server_meta.get("revision", res.get("revision"))
        rows.append(
            [
                str(res.get("kind", "?")),
                str(meta.get("name", "?")),
                "-" if revision is None else str(revision),
                ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-",
            ]
        )
    rows.sort(key=lambda r: (r[0], r[1]))
    return rows


def cmd_get(opts: Options, args: argparse.Namespace) -> int:
    """``get [KIND [NAME]]``: a table, re-appliable YAML or controld's JSON."""
    kind = resolve_kind(args.kind) if args.kind else None
    listing: ResourceList | None = None
    with opts.client() as client:
        if kind is not None and args.name:
            answer: Any = client.get_resource(kind, args.name)
            resources = [answer]
        else:
            answer = listing = client.list_resources(kind)
            resources = list(listing.resources)
    if opts.output == "json":
        print(render.to_json(answer))
    elif opts.output == "yaml":
        print(render.to_yaml_documents(_compact_manifest(r) for r in resources), end="")
    elif not resources:
        print(f"no {kind or ''} resources".replace("  ", " "), file=sys.stderr)
    else:
        rows = resource_rows(resources)
        headers = ["KIND", "NAME", "REVISION", "LABELS"]
        if all(row[2] == "-" for row in rows):
            # A listing has one revision for the whole set, not one per resource.
            headers.pop(2)
            rows = [[k, n, labels] for k, n, _, labels in rows]
        print(render.table(headers, rows))
        if listing is not None:
            print(f"revision {listing.revision}")
    return EXIT_OK


def cmd_delete(opts: Options, args: argparse.Namespace) -> int:
    """``delete KIND NAME`` or ``delete -f FILE|DIR`` (every resource the files define)."""
    if args.filename:
        if args.kind or args.name:
            error("delete takes either KIND NAME or -f FILE, not both")
            return EXIT_USAGE
        local = _load(args.filename)
        if local is None:
            return EXIT_FAILED
        # Dependents (routes) usually follow what they use (resolvers) in files: undo in reverse.
        keys = [r.key for r in reversed(local)]
    elif args.kind and args.name:
        keys = [(resolve_kind(args.kind), args.name)]
    else:
        error("delete needs KIND NAME or -f FILE|DIR")
        return EXIT_USAGE
    failed = False
    answers = []
    with opts.client() as client:
        for kind, name in keys:
            try:
                answer = client.delete_resource(kind, name)
            except ApiError as exc:
                if exc.status == 404:
                    error(f"{kind}/{name} not found")
                elif exc.status == 422:
                    error(f"{kind}/{name} not deleted: {exc.message}")
                    for line in problem_lines(exc.problems, ()):
                        print(line, file=sys.stderr)
                else:
                    raise
                failed = True
                continue
            answers.append(answer)
            if opts.output == "table":
                print(f"{kind}/{name} deleted")
                print(f"revision {answer.revision}")
    if opts.output != "table":
        _dump(opts, answers[0] if len(answers) == 1 else answers)
    return EXIT_FAILED if failed else EXIT_OK


def diff_resource(
    key: tuple[str, str], live: Mapping[str, Any] | None, desired: Mapping[str, Any], source: str
) -> tuple[str, str]:
    """``(state, diff)``: state is ``new``, ``changed`` or ``unchanged``; diff may be empty."""
    kind, name = key
    if live is not None and dict(live) == dict(desired):
        return "unchanged", ""
    text = render.unified_diff(
        live,
        desired,
        before_label=f"controld/{kind}/{name}",
        after_label=f"{source}/{kind}/{name}",
    )
    return ("new" if live is None else "changed"), text


def _compact_manifest(resource: Mapping[str, Any]) -> dict[str, Any]:
    """A resource from controld as a manifest without defaults (what an operator writes).

    A kind or field this meshctl doesn't know is kept as controld sent it.
    """
    from pydantic import ValidationError

    from meshcore.model.resources import parse_resource

    body = {k: v for k, v in resource.items() if k != "meta"}
    try:
        return normalized(parse_resource(body))
    except ValidationError:
        return render.manifest(body)


def _live_manifest(client: ControldClient, kind: str, name: str) -> dict[str, Any] | None:
    """controld's version of a resource, normalized like a local one; ``None`` if absent."""
    try:
        answer = client.get_resource(kind, name)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise
    return _compact_manifest(answer)


def cmd_diff(opts: Options, args: argparse.Namespace) -> int:
    """Unified diff of controld's state vs the files; exit 1 when anything differs."""
    local = _load(args.filename)
    if local is None:
        return EXIT_FAILED
    differs = False
    with opts.client() as client:
        for res in local:
            live = _live_manifest(client, *res.key)
            state, text = diff_resource(res.key, live, res.manifest, res.origin.source)
            kind, name = res.key
            print(f"{kind}/{name}: {state}", file=sys.stderr)
            if text:
                differs = True
                print(text, end="" if text.endswith("\n") else "\n")
    return EXIT_FAILED if differs else EXIT_OK


def _dump(opts: Options, value: Any) -> None:
    if opts.output == "yaml":
        print(render.to_yaml(value), end="")
    else:
        print(render.to_json(value))
