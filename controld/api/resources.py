"""``/v1/resources`` and ``/v1/revisions``: policy resources, validated before they are stored."""

# No `from __future__ import annotations`: FastAPI evaluates route signatures, whose
# Annotated aliases are local to the router factories.

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import trio
from fastapi import APIRouter, Depends, Query, Security
from pydantic import ValidationError
from starlette.requests import Request

from controld.api.deps import BEARER, Auditor, Guard
from controld.api.errors import ApiError
from controld.api.features import FeatureGap, feature_gaps
from controld.api.plane import ControlPlane
from controld.auth import Principal
from controld.compiler import ResourceProblem, validate_resources
from controld.events import EventSink, NullSink, record_changes
from controld.store import ApplyResult, ResourceNotFound, RevisionRecord, StoreError
from meshcore.api.errors import Problem, loc_path
from meshcore.api.resources import (
    RESOURCES_PATH,
    REVISIONS_PATH,
    ApplyAnswer,
    ApplyRequest,
    Change,
    ResourceList,
)
from meshcore.model.resources import KINDS, Resource, ResourceSet, parse_resource, resource_key

__all__ = ["resources_router"]

#: Longest a write waits for the store's watch to show its revision.
SETTLE_S = 2.0


def _doc_identity(doc: Mapping[str, Any]) -> tuple[str | None, str | None]:
    kind = doc.get("kind")
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    return (kind if isinstance(kind, str) else None, name if isinstance(name, str) else None)


def parse_documents(
    docs: Sequence[Mapping[str, Any]],
) -> tuple[list[Resource], list[Problem]]:
    """Parse each document; problems carry the 0-based ``document`` index and a field path."""
    parsed: list[Resource] = []
    problems: list[Problem] = []
    seen: dict[tuple[str, str], int] = {}
    for index, doc in enumerate(docs):
        kind, name = _doc_identity(doc)
        try:
            resource = parse_resource(doc)
        except ValidationError as exc:
            for err in exc.errors():
                loc = tuple(err.get("loc", ()))
                # The discriminated union puts the kind tag first; it is not a field.
                if loc and loc[0] == kind and kind in KINDS:
                    loc = loc[1:]
                elif not loc and err.get("type", "").startswith("union_tag"):
                    loc = ("kind",)
                problems.append(
                    Problem(
                        document=index,
                        kind=kind,
                        name=name,
                        path=loc_path(loc),
                        message=str(err.get("msg", "")),
                    )
                )
            continue
        key = resource_key(resource)
        if key in seen:
            problems.append(
                Problem(
                    document=index,
                    kind=key[0],
                    name=key[1],
                    path="metadata.name",
                    message=f"duplicate of document {seen[key]}",
                )
            )
            continue
        seen[key] = index
        parsed.append(resource)
    return parsed, problems


def cross_problems(
    candidate: ResourceSet,
    index_of: Mapping[tuple[str, str], int],
    ignore: frozenset[ResourceProblem] = frozenset(),
) -> list[Problem]:
    """``validate_resources`` problems of ``candidate`` not in ``ignore``; each names the
    request ``document`` of its resource (None for a resource already stored)."""
    return [
        Problem(
            document=index_of.get((problem.kind, problem.name)),
            kind=problem.kind,
            name=problem.name,
            path=problem.path,
            message=problem.message,
        )
        for problem in validate_resources(candidate)
        if problem not in ignore
    ]


class _Rejected(Exception):
    """The resulting set has cross-resource problems (raised through the store's ``check``)."""

    def __init__(self, problems: list[Problem], message: str = "invalid resources") -> None:
        super().__init__(f"{len(problems)} problems")
        self.problems = problems
        self.message = message


def _answer(
    result: ApplyResult, *, dry_run: bool = False, gaps: Sequence[FeatureGap] = ()
) -> ApplyAnswer:
    return ApplyAnswer(
        revision=result.revision,
        changes=tuple(Change(kind=c.kind, name=c.name, action=c.action) for c in result.changes),
        dry_run=dry_run,
        warnings=tuple(g.as_warning() for g in gaps),
    )


async def _settle(plane: ControlPlane, revision: int) -> None:
    """Wait (briefly) until the followed set has ``revision``, so a read right after a
    write sees it (``meshctl apply`` then ``get``); the write is done either way."""
    if plane.resources().revision >= revision:
        return
    with trio.move_on_after(SETTLE_S):
        await plane.store.wait_changed(revision - 1)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ApiError(
            404,
            f"unknown kind {kind!r}",
            [Problem(path="kind", message="known kinds: " + ", ".join(sorted(KINDS)))],
        )


def resources_router(
    plane: ControlPlane, guard: Guard, auditor: Auditor, events: EventSink | None = None
) -> APIRouter:
    """The resource routes (admin token); changes made are recorded in ``events``."""
    journal = events if events is not None else NullSink()
    router = APIRouter(tags=["resources"], dependencies=[Security(BEARER)])
    Admin = Annotated[Principal, Depends(guard.admin)]
    AdminAudited = Annotated[Principal, Depends(guard.admin_audited)]

    @router.put(
        RESOURCES_PATH,
        responses={422: {"description": "invalid resources (nothing stored)"}},
    )
    async def apply_resources(
        body: ApplyRequest, request: Request, principal: AdminAudited
    ) -> ApplyAnswer:
        """Validate the resources (each alone, then the whole resulting set) and store them
        as one revision; with ``dry_run`` only report what would change.

        ``warnings`` name each connected sidecar that would get a snapshot feature it doesn't
        enforce (it would NACK that snapshot); with ``strict`` that refuses the call (422).
        """
        parsed, problems = parse_documents(body.resources)
        if problems:
            auditor.record(principal.name, request, "invalid", problems=len(problems))
            raise ApiError(422, "invalid resources", problems)
        index_of = {resource_key(r): i for i, r in enumerate(parsed)}
        gaps: list[FeatureGap] = []

        def check(candidate: ResourceSet) -> None:
            # Run by the store on the set it would write, read fresh from the registry.
            found = cross_problems(candidate, index_of)
            if found:
                raise _Rejected(found)
            # What the connected sidecars would get from this set (a retried write re-plans).
            gaps[:] = feature_gaps(plane.view(), candidate, plane.hub.sidecars())
            if gaps and body.strict:
                raise _Rejected([g.as_problem() for g in gaps], "unsupported features (strict)")

        try:
            result = await plane.store.apply(
                parsed, author=principal.name, dry_run=body.dry_run, check=check
            )
        except _Rejected as exc:
            auditor.record(principal.name, request, "invalid", problems=len(exc.problems))
            raise ApiError(422, exc.message, exc.problems) from exc
        except StoreError as exc:
            auditor.record(principal.name, request, "error", error=str(exc))
            raise
        if body.dry_run:
            auditor.record(principal.name, request, "dry_run", revision=result.revision)
        else:
            outcome = "applied" if result.changed else "unchanged"
            auditor.record(principal.name, request, outcome, revision=result.revision)
            record_changes(journal, result.changes, principal.name)
            await _settle(plane, result.revision)
        return _answer(result, dry_run=body.dry_run, gaps=gaps)

    @router.get(RESOURCES_PATH)
    async def list_resources(
        _: Admin, kind: Annotated[str | None, Query(description="only this kind")] = None
    ) -> ResourceList:
        """The current resources (``{"revision", "resources": [...]}``), sorted by kind, name."""
        current = plane.resources()
        if kind is not None:
            _check_kind(kind)
        items = sorted(current.resources.items(), key=lambda kv: kv[0])
        return ResourceList(
            revision=current.revision,
            resources=tuple(r.to_json() for key, r in items if kind is None or key[0] == kind),
        )

    @router.get(
        RESOURCES_PATH + "/{kind}/{name}", responses={404: {"description": "no such resource"}}
    )
    async def get_resource(kind: str, name: str, _: Admin) -> dict[str, Any]:
        """One resource, with ``meta`` = ``{"revision", "author", "time"}`` of its last change."""
        _check_kind(kind)
        stored = await plane.store.get(kind, name)
        if stored is None:
            raise ApiError(404, f"{kind}/{name} not found")
        # The stored copy: the current set may lag the registry by one watch round.
        doc = stored.resource.to_json()
        doc["meta"] = stored.meta_json()
        return doc

    @router.delete(
        RESOURCES_PATH + "/{kind}/{name}",
        responses={
            404: {"description": "no such resource"},
            422: {"description": "would break other resources"},
        },
    )
    async def delete_resource(
        kind: str, name: str, request: Request, principal: AdminAudited
    ) -> ApplyAnswer:
        """Delete one resource as a new revision, unless that breaks the remaining set."""
        _check_kind(kind)
        current = plane.resources()
        if (kind, name) in current.resources:
            # Only problems the deletion introduces count: a broken set stays deletable.
            before = frozenset(validate_resources(current))
            candidate = current.with_changes((), ((kind, name),), current.revision + 1)
            problems = cross_problems(candidate, {}, ignore=before)
            if problems:
                auditor.record(principal.name, request, "invalid", problems=len(problems))
                message = f"deleting {kind}/{name} would leave invalid resources"
                raise ApiError(422, message, problems)
        try:
            # The store reads afresh: it, not the followed set, says whether the resource exists.
            result = await plane.store.delete(kind, name, author=principal.name)
        except ResourceNotFound:
            auditor.record(principal.name, request, "not_found")
            raise
        except StoreError as exc:
            auditor.record(principal.name, request, "error", error=str(exc))
            raise
        record_changes(journal, result.changes, principal.name)
        await _settle(plane, result.revision)
        auditor.record(principal.name, request, "deleted", revision=result.revision)
        return _answer(result)

    @router.get(REVISIONS_PATH)
    async def revisions(
        _: Admin, limit: Annotated[int, Query(ge=1, le=1000)] = 50
    ) -> dict[str, Any]:
        """The newest revision records (author, time, action, changes), newest first."""
        records = await plane.store.history(limit)
        return {"revisions": [record_json(r) for r in records]}

    return router


def record_json(record: RevisionRecord) -> dict[str, Any]:
    """A store ``RevisionRecord`` as JSON."""
    return record.as_json()
