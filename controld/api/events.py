"""``GET /v1/events``: the journal of control-plane events, long-polled (admin only).

The models are :mod:`meshcore.api.events`; the journal is :class:`controld.events.EventJournal`.
"""

# No `from __future__ import annotations`: FastAPI evaluates route signatures, whose
# Annotated aliases are local to the router factory.

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Security

from controld.api.deps import BEARER, Guard
from controld.auth import Principal
from controld.events import EventJournal
from meshcore.api.events import (
    DEFAULT_EVENTS_LIMIT,
    DEFAULT_EVENTS_WAIT_S,
    EVENTS_PATH,
    MAX_EVENTS_LIMIT,
    MAX_EVENTS_WAIT_S,
    ControlEvents,
)

__all__ = ["events_router"]


def events_router(journal: EventJournal, guard: Guard) -> APIRouter:
    """The events route on ``journal``."""
    router = APIRouter(tags=["events"], dependencies=[Security(BEARER)])
    Admin = Annotated[Principal, Depends(guard.admin)]

    @router.get(EVENTS_PATH, responses={422: {"description": "bad `after`, `wait_s` or `limit`"}})
    async def read_events(
        _: Admin,
        after: Annotated[
            int, Query(ge=0, description="the `next` of the previous answer (0: from the start)")
        ] = 0,
        wait_s: Annotated[
            float,
            Query(
                ge=0,
                le=MAX_EVENTS_WAIT_S,
                description="seconds to wait when there is no newer event yet",
            ),
        ] = DEFAULT_EVENTS_WAIT_S,
        limit: Annotated[int, Query(ge=1, le=MAX_EVENTS_LIMIT)] = DEFAULT_EVENTS_LIMIT,
    ) -> ControlEvents:
        """Control-plane events numbered after ``after``, oldest first (at most ``limit``):
        sidecars registering, connecting and disconnecting, snapshots pushed, ACKed and
        NACKed, unsupported features, drains, resource changes, certificates issued and
        renewed, CA rotation steps. Answers at once when newer events exist, else waits up
        to ``wait_s`` for one (a long-poll). The journal is in memory and bounded: ``missed``
        counts events dropped before they were read, ``reset`` says ``after`` was beyond the
        newest event (controld restarted) and the events start again at 1."""
        return await journal.wait_after(after, wait_s=wait_s, limit=limit)

    return router
