"""``/api/v1/events``: the audit trail, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from server.api.auth import Principal
from server.api.deps import Context, context, reader
from server.api.schemas import EventPage
from server.errors import NotFound
from server.inventory import machines as inventory
from server.inventory.models import Event
from server.types import EventGroup, EventKind

router = APIRouter(prefix="/api/v1/events", tags=["events"])


def event_out(e: Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "created_at": inventory.as_utc(e.created_at),
        "machine_id": e.machine_id,
        "machine_name": e.machine_name,
        "actor": e.actor,
        "kind": e.kind,
        "message": e.message,
        "data": e.data,
    }


@router.get("", response_model=EventPage)
def list_events(
    ctx: Annotated[Context, Depends(context)],
    _: Annotated[Principal, Depends(reader)],
    machine: Annotated[str | None, Query(max_length=63, description="machine id or name")] = None,
    kind: Annotated[
        EventKind | EventGroup | None,
        Query(description="an event kind (docs/events.md), or a group: every kind under it"),
    ] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
) -> dict[str, Any]:
    with ctx.db.read() as s:
        machine_id = None
        if machine:
            try:
                machine_id = inventory.get_machine(s, machine).id
            except NotFound:
                machine_id = machine  # events outlive deleted machines: accept a bare id
        page = inventory.list_events(
            s,
            machine_id=machine_id,
            kind=kind,
            since=since and inventory.as_utc(since),
            until=until and inventory.as_utc(until),
            limit=limit,
            cursor=cursor,
        )
        return {"items": [event_out(e) for e in page.items], "next_cursor": page.next_cursor}
