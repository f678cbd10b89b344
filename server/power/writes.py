"""The batched writes of the operation runner: item starts and item results.

A bulk operation makes two writes per machine (start, result). They are a few statements per
batch of machines (executemany, grouped across machines by :mod:`server.inventory.groupcommit`),
never ORM loads or ORM bulk inserts: per-machine ORM work cost more CPU than the BMC exchange
itself.

What a result writes on the machine:

- ``power_request``: the operator's last request (kind, action, at, operation_id, result,
  error), so a machine shows what was last asked of it and how that ended.
- After a power operation: the state it read back, or ``unknown`` with the error when the BMC
  could not be read (a failed operation on an unreachable BMC must not leave the old state and
  time on display). A boot-device operation does not read the power state: a success leaves the
  observation alone, and so does a failure (it may be a refused device, not a dead BMC).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Table, bindparam, select
from sqlalchemy.orm import Session

from bmc import BmcEndpoint, BmcResult, DriverKind, PowerState, Secret
from server.agents import token_wipe
from server.inventory import machines as inventory
from server.inventory.models import Event, Machine, Operation, OperationItem, utcnow
from server.inventory.secretbox import SecretBox
from server.logs import REQUEST_ID
from server.power.kinds import OperationKind
from server.types import EventKind, OpStatus

BMC_COLUMNS = (
    Machine.bmc_driver,
    Machine.bmc_address,
    Machine.bmc_port,
    Machine.bmc_username,
    Machine.bmc_password_enc,
    Machine.bmc_verify_tls,
    Machine.bmc_ca_bundle,
    Machine.bmc_scheme,
)


@dataclass(frozen=True)
class Start:
    op: Operation
    item: OperationItem
    now: datetime


@dataclass(frozen=True)
class Done:
    op: Operation
    item: OperationItem
    result: BmcResult | None
    error: str | None
    request_id: str | None = field(default_factory=REQUEST_ID.get)
    """The REST request that started the operation (its runner task inherited the context)."""


def endpoint_of(m: Machine | Row[Any] | Any, secrets: SecretBox) -> BmcEndpoint | None:
    """The BMC endpoint of a machine (an ORM object or a row of ``BMC_COLUMNS``)."""
    if m.bmc_address is None:
        return None
    password = secrets.decrypt(m.bmc_password_enc) if m.bmc_password_enc else ""
    return BmcEndpoint(
        driver=DriverKind(m.bmc_driver or "auto"),
        address=m.bmc_address,
        port=m.bmc_port,
        username=m.bmc_username or "",
        password=Secret(password),
        verify_tls=m.bmc_verify_tls,
        ca_bundle=m.bmc_ca_bundle,
        scheme=m.bmc_scheme,
    )


def request_view(op: Operation, result: OpStatus, error: str | None = None) -> dict[str, Any]:
    """``machines.power_request`` for ``op`` at stage ``result``."""
    return {
        "kind": op.kind,
        "action": op.action,
        "at": inventory.iso(op.created_at),
        "operation_id": op.id,
        "result": result.value,
        "error": error,
    }


def result_view(r: BmcResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "state": r.state.value,
        "attempts": r.attempts,
        "elapsed_s": round(r.elapsed, 3),
        "changed": r.changed,
    }
    if r.error is not None:  # what failed, as a stable name beside the item's error sentence
        out["error_type"] = type(r.error).__name__
    if r.boot is not None:
        out["boot"] = {
            "device": r.boot.device and r.boot.device.value,
            "persistent": r.boot.persistent,
            "uefi": r.boot.uefi,
        }
    return out


def items_start(s: Session, starts: list[Start], secrets: SecretBox) -> list[BmcEndpoint | None]:
    """Mark items running (and the requests on their machines); return their endpoints."""
    t: Table = OperationItem.__table__  # type: ignore[assignment]
    s.execute(
        t.update()
        .where(t.c.id == bindparam("b_id"))
        .values(
            status=OpStatus.RUNNING.value,
            started_at=bindparam("b_at", type_=t.c.started_at.type),
        ),
        [{"b_id": x.item.id, "b_at": x.now} for x in starts],
    )
    token_wipe.on_power_items_start(s, [(x.op, x.item) for x in starts])  # off/cycle/reset
    ids = {x.item.machine_id for x in starts}
    rows = {r.id: r for r in s.execute(select(Machine.id, *BMC_COLUMNS).where(Machine.id.in_(ids)))}
    return [
        endpoint_of(rows[x.item.machine_id], secrets) if x.item.machine_id in rows else None
        for x in starts
    ]


def _observation(x: Done, now: datetime) -> dict[str, Any] | None:
    """What ``x`` teaches about the machine's power state, or ``None`` (leave it alone)."""
    state = x.result.state if x.result is not None else PowerState.unknown
    if x.error is None:
        if state == PowerState.unknown:  # boot device: nothing read
            return None
        return {"b_observed": state.value, "b_observed_at": now, "b_error": None}
    if x.op.kind != OperationKind.POWER:
        return None
    return {"b_observed": state.value, "b_observed_at": now, "b_error": x.error}


def _machines_done(s: Session, dones: list[Done], now: datetime) -> None:
    machines: Table = Machine.__table__  # type: ignore[assignment]
    c = machines.c
    seen: list[dict[str, Any]] = []
    unseen: list[dict[str, Any]] = []
    for x in dones:
        status = OpStatus.FAILED if x.error else OpStatus.SUCCEEDED
        row = {"b_id": x.item.machine_id, "b_request": request_view(x.op, status, x.error)}
        obs = _observation(x, now)
        (seen if obs else unseen).append(row | (obs or {}))
    request = bindparam("b_request", type_=c.power_request.type)
    if seen:
        s.execute(
            machines.update()
            .where(c.id == bindparam("b_id"))
            .values(
                power_request=request,
                power_observed=bindparam("b_observed", type_=c.power_observed.type),
                power_observed_at=bindparam("b_observed_at", type_=c.power_observed_at.type),
                power_error=bindparam("b_error", type_=c.power_error.type),
                revision=c.revision + 1,
            ),
            seen,
        )
    if unseen:
        s.execute(
            machines.update()
            .where(c.id == bindparam("b_id"))
            .values(power_request=request, revision=c.revision + 1),
            unseen,
        )


def items_done(s: Session, dones: list[Done]) -> list[None]:
    """Record item results, what they say about each machine, and one event per machine."""
    now = utcnow()
    items: Table = OperationItem.__table__  # type: ignore[assignment]
    outcomes = [result_view(x.result) if x.result else {} for x in dones]
    s.execute(
        items.update()
        .where(items.c.id == bindparam("b_id"))
        .values(
            status=bindparam("b_status"),
            error=bindparam("b_error", type_=items.c.error.type),
            result=bindparam("b_result", type_=items.c.result.type),
            finished_at=bindparam("b_at", type_=items.c.finished_at.type),
            active_machine_id=None,
        ),
        [
            {
                "b_id": x.item.id,
                "b_status": (OpStatus.FAILED if x.error else OpStatus.SUCCEEDED).value,
                "b_error": x.error,
                "b_result": out,
                "b_at": now,
            }
            for x, out in zip(dones, outcomes, strict=True)
        ],
    )
    _machines_done(s, dones, now)  # a deleted machine matches no row
    existing = set(
        s.scalars(select(Machine.id).where(Machine.id.in_({x.item.machine_id for x in dones})))
    )
    events = []
    for x, out in zip(dones, outcomes, strict=True):
        if x.item.machine_id not in existing:  # deleted while the operation ran
            continue
        verb = "failed" if x.error else "succeeded"
        events.append(
            {
                "actor": x.op.requested_by,
                "kind": EventKind(f"{x.op.kind}.{verb}").value,
                "machine_id": x.item.machine_id,
                "machine_name": x.item.machine_name,
                "created_at": now,
                "data": inventory.with_request_id({"operation": x.op.id, **out}, x.request_id),
                "message": f"{x.op.kind} {x.op.action} {verb}"
                + (f": {x.error}" if x.error else ""),
            }
        )
    if events:  # the table's insert: the ORM's bulk insert adds ~2 us of CPU per row
        s.execute(Event.__table__.insert(), events)  # type: ignore[attr-defined]
    return [None] * len(dones)
