"""Reading operations back: one operation's view, and the paginated list of operations."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session, lazyload

from server.errors import Invalid
from server.inventory import machines as inventory
from server.inventory import pages
from server.inventory.models import Operation, OperationItem

ITEM_COLUMNS = (
    OperationItem.machine_id,
    OperationItem.machine_name,
    OperationItem.status,
    OperationItem.result,
    OperationItem.error,
    OperationItem.started_at,
    OperationItem.finished_at,
)


def get_operation_view(s: Session, op_id: str) -> dict[str, Any] | None:
    """One operation's view, its items read as plain rows: a client polling a 1,000-machine
    operation must not cost 1,000 ORM objects per poll. ``None`` if there is no such operation."""
    op = s.scalars(
        select(Operation).where(Operation.id == op_id).options(lazyload(Operation.items))
    ).first()
    if op is None:
        return None
    items = s.execute(
        select(*ITEM_COLUMNS).where(OperationItem.operation_id == op_id).order_by(OperationItem.id)
    )
    return operation_view(op, items)


def operation_view(op: Operation, items: Iterable[Any] | None = None) -> dict[str, Any]:
    """The API view of ``op``; ``items`` (rows of :data:`ITEM_COLUMNS`, in id order) instead of
    ``op.items`` when given."""
    iso = inventory.iso
    return {
        "id": op.id,
        "kind": op.kind,
        "action": op.action,
        "params": op.params,
        "status": op.status,
        "requested_by": op.requested_by,
        "created_at": iso(op.created_at),
        "started_at": iso(op.started_at),
        "finished_at": iso(op.finished_at),
        "error": op.error,
        "items": [
            {
                "machine_id": i.machine_id,
                "machine": i.machine_name,
                "status": i.status,
                "result": i.result,
                "error": i.error,
                "started_at": iso(i.started_at),
                "finished_at": iso(i.finished_at),
            }
            for i in (op.items if items is None else items)
        ],
    }


def list_operations(s: Session, *, limit: int, cursor: str | None = None) -> pages.Page:
    """Newest first (``created_at``, then ``id``), ``limit`` per page; the cursor names the last
    operation of the previous page."""
    stmt = select(Operation)
    if cursor:
        c = pages.decode_cursor(cursor)
        try:
            at = datetime.fromisoformat(c["t"])
            op_id = str(c["id"])
        except (KeyError, TypeError, ValueError):
            raise Invalid(message="invalid cursor", details={"field": "cursor"}) from None
        # one row-value comparison: the planner seeks ix_operations_created_at_id to it
        stmt = stmt.where(tuple_(Operation.created_at, Operation.id) < tuple_(at, op_id))
    order = (Operation.created_at.desc(), Operation.id.desc())
    rows = list(s.scalars(stmt.order_by(*order).limit(limit + 1)))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = pages.encode_cursor({"t": last.created_at.isoformat(), "id": last.id})
    return pages.Page([operation_view(op) for op in rows], next_cursor)
