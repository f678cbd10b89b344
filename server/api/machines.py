"""``/api/v1/machines``: the machine inventory."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError
from starlette.concurrency import run_in_threadpool

from server.agents import revocation, token_wipe
from server.api.auth import Principal
from server.api.deps import Context, context, generations, operator, reader
from server.api.events import event_out
from server.api.schemas import (
    BmcIn,
    EventPage,
    MachineCreate,
    MachineOut,
    MachinePage,
    MachineUpdate,
)
from server.errors import Conflict, Invalid, PhaseTransitionRefused
from server.inventory import conflicts, phases
from server.inventory import machines as inventory
from server.inventory.models import Machine, utcnow
from server.inventory.selectors import parse_param
from server.power.addresses import checked_bmc_address
from server.types import EventGroup, EventKind, Phase

router = APIRouter(prefix="/api/v1/machines", tags=["machines"])


def machine_out(s: Session, m: Machine) -> dict[str, Any]:
    """Render a machine just written in session ``s`` (one serializer for reads and writes)."""
    s.flush()
    return inventory.machine_views(s, [m.id])[0]


def _apply_bmc(ctx: Context, m: Machine, bmc: BmcIn, changes: dict[str, Any]) -> None:
    host, port = checked_bmc_address(
        ctx.settings, bmc.address, bmc.port, driver=bmc.driver, scheme=bmc.scheme
    )
    m.bmc_driver = bmc.driver.value
    m.bmc_address = host
    m.bmc_port = port
    m.bmc_scheme = bmc.scheme
    m.bmc_username = bmc.username
    if bmc.password is not None:
        m.bmc_password_enc = ctx.secrets.encrypt(bmc.password.get_secret_value())
        changes["bmc.password"] = "(changed)"
    m.bmc_verify_tls = bmc.verify_tls
    m.bmc_ca_bundle = bmc.ca_bundle
    changes["bmc"] = {
        "driver": m.bmc_driver,
        "address": m.bmc_address,
        "port": m.bmc_port,
        "verify_tls": m.bmc_verify_tls,
        "scheme": m.bmc_scheme,
    }


def _audit_insecure(s: Session, who: Principal, m: Machine, bmc: BmcIn) -> None:
    if not bmc.verify_tls:
        inventory.record(
            s,
            actor=who.actor,
            kind=EventKind.MACHINE_BMC_TLS_INSECURE,
            machine=m,
            message="BMC TLS verification turned off",
        )
    if bmc.scheme == "http":
        inventory.record(
            s,
            actor=who.actor,
            kind=EventKind.MACHINE_BMC_PLAINTEXT,
            machine=m,
            message="BMC reached over plain HTTP: credentials travel unencrypted",
        )


@router.post("", status_code=201, response_model=MachineOut)
def create_machine(
    body: MachineCreate,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    now = utcnow()
    try:
        with ctx.db.write() as s:
            m = Machine(
                id=str(uuid.uuid4()),
                name=body.name,
                smbios_uuid=body.uuid,
                serial=body.serial,
                phase=body.phase.value,
                boot_from=body.boot_from,
                power_observed="unknown",
                hardware=body.hardware,
                created_at=now,
                updated_at=now,
                nics=[],
                label_rows=[],
            )
            inventory.set_nics(m, [n.spec for n in body.nics])
            inventory.set_labels(m, body.labels)
            changes: dict[str, Any] = {}
            if body.bmc:
                _apply_bmc(ctx, m, body.bmc, changes)
            s.add(m)
            s.flush()
            inventory.record(
                s,
                actor=who.actor,
                kind=EventKind.MACHINE_CREATED,
                machine=m,
                message=f"machine {m.name} created",
                data={"macs": [n.mac for n in m.nics], "labels": body.labels},
            )
            if body.bmc:
                _audit_insecure(s, who, m, body.bmc)
            return machine_out(s, m)
    except IntegrityError as exc:
        raise _conflict(ctx, exc, _claims(body)) from None


def _claims(body: MachineCreate | MachineUpdate) -> conflicts.Claims:
    specs = [n.spec for n in body.nics or ()]
    return conflicts.Claims(
        name=body.name,
        uuid=body.uuid,
        macs=tuple(mac for mac, _, _ in specs),
        ips=tuple(ip for _, _, ip in specs if ip is not None),
    )


def _conflict(
    ctx: Context, exc: IntegrityError, claims: conflicts.Claims, machine_id: str | None = None
) -> Conflict:
    """The 409 naming the field and the machine that already holds the value."""
    with ctx.db.read() as s:
        return conflicts.machine_conflict(s, exc, claims, machine_id)


async def _cached_json(
    request: Request, ctx: Context, key: tuple[Any, ...], build: Callable[[], bytes]
) -> Response:
    """Serve the JSON body ``build()`` returns from the read cache when the inventory has not
    changed since it was built (``server/inventory/readcache.py``), with an ETag so pollers can
    revalidate for free. A hit runs on the event loop; only a miss goes to the thread pool
    (database reads; the bodies come encoded from the read model, ``inventory/listview.py``)."""
    gen = generations(request).inventory
    entry = ctx.cache.get(key, gen)
    if entry is None:
        entry = ctx.cache.put(key, gen, await run_in_threadpool(build))
    headers = {"ETag": entry.etag, "Cache-Control": "private, no-cache"}
    if entry.etag in (
        t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")
    ):
        return Response(status_code=304, headers=headers)
    return Response(entry.body, media_type="application/json", headers=headers)


@router.get("", response_model=MachinePage)
async def list_machines(
    request: Request,
    ctx: Annotated[Context, Depends(context)],
    _: Annotated[Principal, Depends(reader)],
    selector: Annotated[str | None, Query(max_length=4096)] = None,
    phase: Phase | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
    sort: Annotated[str, Query(max_length=64)] = "name",
) -> Response:
    reqs = parse_param(selector) if selector else ()

    def build() -> bytes:
        with ctx.db.read() as s:
            return inventory.page_body(
                s, selector=reqs, phase=phase and phase.value, limit=limit, cursor=cursor, sort=sort
            )

    return await _cached_json(
        request, ctx, ("machines", selector, phase, limit, cursor, sort), build
    )


@router.get("/{key}", response_model=MachineOut)
async def get_machine(
    key: str,
    request: Request,
    ctx: Annotated[Context, Depends(context)],
    _: Annotated[Principal, Depends(reader)],
) -> Response:
    def build() -> bytes:
        with ctx.db.read() as s:
            return inventory.machine_body(s, key)

    return await _cached_json(request, ctx, ("machine", key), build)


def _check_transition(m: Machine, target: Phase) -> None:
    """409 naming the allowed phases when the lifecycle has no edge ``m.phase -> target``."""
    current = Phase(m.phase)
    if not phases.may_transition(current, target):
        allowed = [p.value for p in phases.allowed_targets(current)]
        raise PhaseTransitionRefused(
            {"field": "phase", "from": current.value, "to": target.value, "allowed": allowed},
            machine=m.name,
            current=current.value,
            target=target.value,
            allowed=", ".join(allowed),
        )


_SCALAR_FIELDS = (
    ("name", "name"),
    ("uuid", "smbios_uuid"),
    ("serial", "serial"),
    ("hardware", "hardware"),
    ("fault_reason", "fault_reason"),
    ("boot_from", "boot_from"),
)
"""(request field, column) of the fields a PATCH replaces as a whole."""


def _patch_scalars(m: Machine, body: MachineUpdate, changes: dict[str, Any]) -> None:
    for attr, col in _SCALAR_FIELDS:
        if attr in body.model_fields_set:
            value = getattr(body, attr)
            if attr in ("name", "boot_from") and value is None:
                raise Invalid(message=f"{attr} cannot be removed", details={"field": attr})
            if getattr(m, col) != value:
                setattr(m, col, value)
                changes[attr] = "(updated)" if attr == "hardware" else value


def _patch_labels_nics(m: Machine, body: MachineUpdate, changes: dict[str, Any]) -> None:
    if body.labels is not None:
        labels = m.labels
        for k, v in body.labels.items():
            if v is None:
                labels.pop(k, None)
            else:
                labels[k] = v
        if labels != m.labels:
            changes["labels"] = labels
            inventory.set_labels(m, labels)
    if body.nics is not None:
        specs = [n.spec for n in body.nics]
        if specs != [(n.mac, n.name, n.ip) for n in m.nics]:
            inventory.set_nics(m, specs)
            changes["nics"] = [mac for mac, _, _ in specs]


def _patch_bmc(
    ctx: Context,
    s: Session,
    who: Principal,
    m: Machine,
    body: MachineUpdate,
    changes: dict[str, Any],
) -> None:
    if "bmc" not in body.model_fields_set:
        return
    if body.bmc is None:
        if m.bmc_address is not None:
            m.bmc_driver = m.bmc_address = m.bmc_username = None
            m.bmc_port = m.bmc_password_enc = m.bmc_ca_bundle = None
            m.bmc_verify_tls = True
            m.bmc_scheme = "https"
            changes["bmc"] = None
    else:  # a missing password keeps the stored one: it is write-only
        _apply_bmc(ctx, m, body.bmc, changes)
        _audit_insecure(s, who, m, body.bmc)


@router.patch("/{key}", response_model=MachineOut)
def update_machine(
    key: str,
    body: MachineUpdate,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    """Change some fields; a phase change must follow the lifecycle (server/inventory/phases.py,
    409 ``phase_transition`` with the allowed phases otherwise)."""
    mid: str | None = None
    try:
        with ctx.db.write() as s:
            m = inventory.get_machine(s, key)
            mid = m.id
            changes: dict[str, Any] = {}
            _patch_scalars(m, body, changes)
            if body.phase is not None and m.phase != body.phase.value:
                _check_transition(m, body.phase)
                changes["phase"] = {"from": m.phase, "to": body.phase.value}
                m.phase = body.phase.value
                token_wipe.on_phase_change(s, m, who.actor)  # reprovision wipes its token
                revocation.on_phase_change(s, m, who.actor)  # ... and revokes its certificates
            _patch_labels_nics(m, body, changes)
            _patch_bmc(ctx, s, who, m, body, changes)
            if changes:
                m.updated_at = utcnow()
                s.flush()
                inventory.record(
                    s,
                    actor=who.actor,
                    kind=EventKind.MACHINE_UPDATED,
                    machine=m,
                    message=f"machine {m.name} updated: {', '.join(sorted(changes))}",
                    data=changes,
                )
            return machine_out(s, m)
    except IntegrityError as exc:
        raise _conflict(ctx, exc, _claims(body), mid) from None
    except StaleDataError:
        raise Conflict(message="machine changed concurrently; retry") from None


@router.delete("/{key}", status_code=204)
def delete_machine(
    key: str,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
) -> Response:
    try:
        with ctx.db.write() as s:
            m = inventory.get_machine(s, key)
            inventory.record(
                s,
                actor=who.actor,
                kind=EventKind.MACHINE_DELETED,
                machine=m,
                message=f"machine {m.name} deleted",
                data={"macs": [n.mac for n in m.nics]},
            )
            s.delete(m)
    except StaleDataError:
        raise Conflict(message="machine changed concurrently; retry") from None
    return Response(status_code=204)


@router.get("/{key}/events", response_model=EventPage)
def machine_events(
    key: str,
    ctx: Annotated[Context, Depends(context)],
    _: Annotated[Principal, Depends(reader)],
    kind: Annotated[
        EventKind | EventGroup | None,
        Query(description="an event kind (docs/events.md), or a group: every kind under it"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
) -> dict[str, Any]:
    with ctx.db.read() as s:
        m = inventory.get_machine(s, key)
        page = inventory.list_events(s, machine_id=m.id, kind=kind, limit=limit, cursor=cursor)
        return {"items": [event_out(e) for e in page.items], "next_cursor": page.next_cursor}
