"""Pages of machines and of events: label selectors as indexed sub-queries, keyset cursors, and
a page cut from the stored views (``listview``) or, as the reference, from the columns. Every
list walks an index and stops after its page (docs/performance.md)."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    and_,
    bindparam,
    exists,
    func,
    literal_column,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.orm import Session

from server.errors import Invalid, NotFound
from server.inventory import listview
from server.inventory.models import Event, Machine, MachineLabel
from server.inventory.selectors import Op, Requirement
from server.inventory.views import as_utc, by_key, machine_views, view, view_columns_of
from server.types import EventGroup, EventKind

SORT_FIELDS = {
    "name": Machine.name,
    "created_at": Machine.created_at,
    "updated_at": Machine.updated_at,
    "phase": Machine.phase,
}
"""The only columns a client may sort on (an allowlist: never a column name from input)."""


@dataclass(frozen=True)
class Page:
    items: list[Any]
    next_cursor: str | None


_AUTO: Any = object()


def selector_clause(
    reqs: Sequence[Requirement], driver: Requirement | None = _AUTO
) -> ColumnElement[bool]:
    """Translate parsed label requirements into indexed sub-queries.

    ``driver`` (by default the first ``key=value`` / ``key in (...)`` requirement) becomes an
    ``id IN (...)`` sub-query on the (key, value) index: the planner starts from its few label
    rows, which is right when every match is wanted (operations, rollouts) or when the matches
    are few. Every other requirement is a correlated EXISTS probe of the primary key
    (machine_id, key); with ``driver=None`` all of them are, and a sorted, limited query walks
    the sort index and probes each machine until the page is full (:func:`list_machines`).
    """
    if driver is _AUTO:
        driver = next((r for r in reqs if r.op in (Op.EQ, Op.IN)), None)
    clauses: list[ColumnElement[bool]] = []
    if driver is not None:
        clauses.append(
            Machine.id.in_(
                select(MachineLabel.machine_id).where(
                    MachineLabel.key == driver.key, MachineLabel.value.in_(driver.values)
                )
            )
        )
    for r in reqs:
        if r is driver:
            continue  # the IN sub-query above already says it
        sub = select(MachineLabel.machine_id).where(
            MachineLabel.machine_id == Machine.id, MachineLabel.key == r.key
        )
        if r.op in (Op.EQ, Op.NE, Op.IN, Op.NOTIN):
            sub = sub.where(MachineLabel.value.in_(r.values))
        positive = r.op in (Op.EXISTS, Op.EQ, Op.IN)
        clauses.append(exists(sub) if positive else ~exists(sub))
    return and_(*clauses) if clauses else and_(True)


FEW_MATCHES_PER_ROW = 5
"""A page's driver requirement counts as "few matches" below this many label rows per row asked
for: gathering and sorting them costs at most 5 x page."""


def page_driver(session: Session, reqs: Sequence[Requirement], limit: int) -> Requirement | None:
    """The requirement a page of :func:`list_machines` should start from, or ``None`` to walk the
    sort index.

    A page costs the smaller of two plans, and neither depends on the fleet's size: start from
    the label rows of the most selective ``=``/``in`` requirement and sort them (costs its match
    count), or walk the sort index and probe each machine's labels until the page is full (costs
    page / selectivity). Which is smaller is decided by counting, with a cap, the label rows of
    each candidate: an index range count that stops at ``FEW_MATCHES_PER_ROW * (limit + 1)``,
    so the decision itself costs O(page); the first candidate under the cap is taken. Planners
    cannot make this choice well on their own: SQLite has no per-value statistics, and without
    migration 0014's statistics PostgreSQL multiplies those of ``key`` and ``value``.
    """
    i = _driver_index(session, reqs, limit)
    return None if i is None else reqs[i]


def _driver_index(session: Session, reqs: Sequence[Requirement], limit: int) -> int | None:
    candidates = tuple(i for i, r in enumerate(reqs) if r.op in (Op.EQ, Op.IN))
    if not candidates:
        return None
    cap = FEW_MATCHES_PER_ROW * (limit + 1)
    params = {"cap": cap} | _selector_params([reqs[i] for i in candidates], candidates)
    row = session.execute(_counts_template(candidates), params).one()
    return next((i for i, n in zip(candidates, row, strict=True) if (n or 0) < cap), None)


# A page's statements are built once per shape (which operators, which driver, cursor or not,
# sort) with every value a bound parameter, and reused: building and cache-keying a SQLAlchemy
# statement cost as much CPU as the database's work for the page. The SQL is the same as
# ``selector_clause`` writes (tests/server/inventory/test_list_plans.py checks its plans).


def _selector_params(reqs: Sequence[Requirement], at: Sequence[int]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for i, r in zip(at, reqs, strict=True):
        params[f"k{i}"] = r.key
        if r.op in (Op.EQ, Op.NE, Op.IN, Op.NOTIN):
            params[f"v{i}"] = list(r.values)
    return params


def _label_match(i: int, op: Op) -> list[ColumnElement[bool]]:
    cond = [MachineLabel.key == bindparam(f"k{i}")]
    if op in (Op.EQ, Op.NE, Op.IN, Op.NOTIN):
        cond.append(MachineLabel.value.in_(bindparam(f"v{i}", expanding=True)))
    return cond


@functools.lru_cache(maxsize=256)
def _counts_template(candidates: tuple[int, ...]) -> Select[Any]:
    """One statement counting, each up to ``:cap``, the label rows of every candidate (the
    (key, value) index alone: no table row is read)."""
    cap = bindparam("cap", type_=Integer)
    return select(
        *(
            select(func.count())
            .select_from(
                select(literal_column("1")).where(*_label_match(i, Op.IN)).limit(cap).subquery()
            )
            .scalar_subquery()
            for i in candidates
        )
    )


def _selector_template(ops: tuple[Op, ...], driver: int | None) -> ColumnElement[bool]:
    """:func:`selector_clause` with bound parameters ``k<i>``/``v<i>`` for requirement ``i``."""
    clauses: list[ColumnElement[bool]] = []
    if driver is not None:
        clauses.append(
            Machine.id.in_(select(MachineLabel.machine_id).where(*_label_match(driver, Op.IN)))
        )
    for i, op in enumerate(ops):
        if i == driver:
            continue
        sub = select(MachineLabel.machine_id).where(
            MachineLabel.machine_id == Machine.id, *_label_match(i, op)
        )
        positive = op in (Op.EXISTS, Op.EQ, Op.IN)
        clauses.append(exists(sub) if positive else ~exists(sub))
    return and_(*clauses) if clauses else and_(True)


@functools.lru_cache(maxsize=512)
def _page_template(
    dialect: str,
    fast: bool,
    ops: tuple[Op, ...],
    driver: int | None,
    phase: bool,
    cursor: bool,
    field: str,
    desc: bool,
) -> Select[Any]:
    col = SORT_FIELDS[field]
    cols = (Machine.id, col, Machine.list_view) if fast else view_columns_of(dialect)
    stmt = select(*cols).where(_selector_template(ops, driver))
    if phase:
        stmt = stmt.where(Machine.phase == bindparam("phase"))
    if cursor:
        key = tuple_(col, Machine.id)
        bound = tuple_(bindparam("cv", type_=col.type), bindparam("cid", type_=Machine.id.type))
        stmt = stmt.where(key < bound if desc else key > bound)
    order = (col.desc(), Machine.id.desc()) if desc else (col.asc(), Machine.id.asc())
    return stmt.order_by(*order).limit(bindparam("lim", type_=Integer))


def encode_cursor(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()


def decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not isinstance(data, dict):
            raise ValueError
        return data
    except (ValueError, UnicodeDecodeError):
        raise Invalid(message="invalid cursor", details={"field": "cursor"}) from None


def _cursor_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return as_utc(value).isoformat()
    return value


def parse_sort(sort: str) -> tuple[str, bool]:
    desc = sort.startswith("-")
    field = sort[1:] if desc else sort
    if field not in SORT_FIELDS:
        raise Invalid(
            message=f"cannot sort by {field!r}",
            details={"field": "sort", "allowed": sorted(SORT_FIELDS)},
        )
    return field, desc


def list_machines(
    session: Session,
    *,
    selector: Sequence[Requirement] = (),
    phase: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
    sort: str = "name",
) -> Page:
    """A page of machine views, built from the machines' columns (the slow path, and the
    reference the read model is held to)."""
    rows, next_cursor = _page_rows(session, False, selector, phase, limit, cursor, sort)
    return Page([view(r) for r in rows], next_cursor)


def page_body(
    session: Session,
    *,
    selector: Sequence[Requirement] = (),
    phase: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
    sort: str = "name",
) -> bytes:
    """The encoded page ``{"items": [...], "next_cursor": ...}``, byte for byte what encoding
    :func:`list_machines` gives, from the machines' stored views (``listview``): one query, the
    rows' bytes joined. If any row's view is stale the whole page is read the slow way (one
    statement, so one snapshot on PostgreSQL too)."""
    rows, next_cursor = _page_rows(session, True, selector, phase, limit, cursor, sort)
    fragments = [r.list_view for r in rows]
    if None in fragments:
        page = list_machines(
            session, selector=selector, phase=phase, limit=limit, cursor=cursor, sort=sort
        )
        return listview.encode({"items": page.items, "next_cursor": page.next_cursor})
    return listview.join_page(fragments, next_cursor)


def machine_body(session: Session, key: str) -> bytes:
    """One machine's encoded view, by id or name, from its stored view when it is fresh."""
    stored = session.execute(select(Machine.id, Machine.list_view).where(by_key(key))).first()
    if stored is None:
        raise NotFound(kind="machine", key=key)
    if stored.list_view is not None:
        return bytes(stored.list_view)
    views = machine_views(session, [stored.id])
    if not views:  # deleted since (PostgreSQL: the next statement sees the next commit)
        raise NotFound(kind="machine", key=key)
    return listview.encode(views[0])


def _page_rows(
    session: Session,
    fast: bool,
    selector: Sequence[Requirement],
    phase: str | None,
    limit: int,
    cursor: str | None,
    sort: str,
) -> tuple[Sequence[Any], str | None]:
    """A page's rows: the view's columns, or (``fast``) id, sort column and stored view."""
    field, desc = parse_sort(sort)
    params: dict[str, Any] = {"lim": limit + 1}
    params |= _selector_params(selector, range(len(selector)))
    if phase:
        params["phase"] = phase
    if cursor:
        c = decode_cursor(cursor)
        if c.get("s") != sort or "v" not in c or "id" not in c:
            raise Invalid(
                message="cursor does not belong to this sort order", details={"field": "cursor"}
            )
        value: Any = c["v"]
        if field in ("created_at", "updated_at"):
            try:
                value = datetime.fromisoformat(value)
            except (TypeError, ValueError):
                raise Invalid(message="invalid cursor", details={"field": "cursor"}) from None
        params |= {"cv": value, "cid": c["id"]}
    driver = _driver_index(session, selector, limit)
    ops = tuple(r.op for r in selector)
    dialect = session.get_bind().dialect.name
    stmt = _page_template(dialect, fast, ops, driver, bool(phase), bool(cursor), field, desc)
    rows = session.execute(stmt, params).all()
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        value = _cursor_value(getattr(last, field))
        next_cursor = encode_cursor({"s": sort, "v": value, "id": last.id})
    return rows, next_cursor


def event_kinds(group: EventGroup) -> list[str]:
    """Every kind under ``group`` (``machine`` -> ``machine.created``, ...)."""
    return [k.value for k in EventKind if k.value.startswith(group.value + ".")]


def list_events(
    session: Session,
    *,
    machine_id: str | None = None,
    kind: EventKind | EventGroup | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> Page:
    """Newest first. Each filter is answered by walking one index backwards and stopping after
    the page: ``(machine_id, id)``, ``(kind, id)`` or the primary key. A group is one branch per
    kind, each its own ``LIMIT``, merged: a page costs (kinds in the group) x (page), never the
    group's whole history (``kind IN (...)`` alone would gather every match, then sort)."""
    conds: list[ColumnElement[bool]] = []
    if machine_id:
        conds.append(Event.machine_id == machine_id)
    if since:
        conds.append(Event.created_at >= since)
    if until:
        conds.append(Event.created_at < until)
    if cursor:
        c = decode_cursor(cursor)
        if not isinstance(c.get("id"), int):
            raise Invalid(message="invalid cursor", details={"field": "cursor"})
        conds.append(Event.id < c["id"])
    newest = Event.id.desc()
    if isinstance(kind, EventGroup) and not machine_id:
        branches = [
            select(Event.id).where(*conds, Event.kind == k).order_by(newest).limit(limit + 1)
            for k in event_kinds(kind)
        ]
        merged = union_all(*(select(b.subquery().c.id) for b in branches)).subquery()
        ids = select(merged.c.id).order_by(merged.c.id.desc()).limit(limit + 1)
        stmt = select(Event).where(Event.id.in_(ids))
    else:
        if isinstance(kind, EventGroup):  # one machine's events: walk them, keep the group's
            conds.append(Event.kind.in_(event_kinds(kind)))
        elif kind is not None:
            conds.append(Event.kind == kind.value)
        stmt = select(Event).where(*conds)
    rows = list(session.scalars(stmt.order_by(newest).limit(limit + 1)))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor({"id": rows[-1].id})
    return Page(rows, next_cursor)
