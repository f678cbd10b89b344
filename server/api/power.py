"""Power and boot-device endpoints, and ``/api/v1/operations``.

Changes answer 202 with an operation to poll; a live power read answers at once."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from bmc import BootDevice, PowerAction
from server.api.auth import Principal
from server.api.deps import Context, context, operator, reader
from server.api.schemas import Strict
from server.errors import NotFound
from server.inventory.selectors import parse_param
from server.power import listing
from server.power.kinds import OperationKind
from server.power.service import PowerService

router = APIRouter(tags=["power"])


class PowerRequest(Strict):
    action: PowerAction


class BootDeviceRequest(Strict):
    device: BootDevice
    persistent: bool = False
    uefi: bool = True


class BulkPowerRequest(Strict):
    selector: str = Field(min_length=1, max_length=4096)
    action: PowerAction
    max_parallel: int = Field(default=32, ge=1, le=1024)
    stagger_ms: int = Field(default=0, ge=0, le=60_000)
    """Delay between the starts of two machines: avoids rack power surges and PXE storms."""


def power(request: Request) -> PowerService:
    service: PowerService = request.app.state.power
    return service


def _get_op(ctx: Context, op_id: str) -> dict[str, Any]:
    with ctx.db.read() as s:
        view = listing.get_operation_view(s, op_id)
        if view is None:
            raise NotFound(kind="operation", key=op_id)
        return view


async def _submit(svc: PowerService, ctx: Context, **kw: Any) -> dict[str, Any]:
    op_id = await run_in_threadpool(lambda: svc.submit(**kw))
    svc.start(op_id)
    return await run_in_threadpool(_get_op, ctx, op_id)


@router.post("/api/v1/machines/{key}/power", status_code=202)
async def machine_power(
    key: str,
    body: PowerRequest,
    ctx: Annotated[Context, Depends(context)],
    svc: Annotated[PowerService, Depends(power)],
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    return await _submit(
        svc,
        ctx,
        kind=OperationKind.POWER,
        action=body.action.value,
        params={},
        actor=who.actor,
        keys=[key],
    )


@router.get("/api/v1/machines/{key}/power")
async def machine_power_state(
    key: str,
    svc: Annotated[PowerService, Depends(power)],
    _: Annotated[Principal, Depends(reader)],
) -> dict[str, Any]:
    """Read the power state from the BMC now (and record it)."""
    return await svc.read_power(key)


@router.put("/api/v1/machines/{key}/boot-device", status_code=202)
async def machine_boot_device(
    key: str,
    body: BootDeviceRequest,
    ctx: Annotated[Context, Depends(context)],
    svc: Annotated[PowerService, Depends(power)],
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    return await _submit(
        svc,
        ctx,
        kind=OperationKind.BOOT_DEVICE,
        action=body.device.value,
        params={"persistent": body.persistent, "uefi": body.uefi},
        actor=who.actor,
        keys=[key],
    )


@router.post("/api/v1/power", status_code=202)
async def bulk_power(
    body: BulkPowerRequest,
    ctx: Annotated[Context, Depends(context)],
    svc: Annotated[PowerService, Depends(power)],
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    reqs = parse_param(body.selector)
    return await _submit(
        svc,
        ctx,
        kind=OperationKind.POWER,
        action=body.action.value,
        actor=who.actor,
        selector=reqs,
        params={
            "selector": body.selector,
            "max_parallel": body.max_parallel,
            "stagger_ms": body.stagger_ms,
        },
    )


@router.get("/api/v1/operations/{op_id}")
def get_operation(
    op_id: str,
    ctx: Annotated[Context, Depends(context)],
    _: Annotated[Principal, Depends(reader)],
) -> dict[str, Any]:
    return _get_op(ctx, op_id)


@router.get("/api/v1/operations")
def list_operations(
    ctx: Annotated[Context, Depends(context)],
    _: Annotated[Principal, Depends(reader)],
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
) -> dict[str, Any]:
    """Newest first, ``{items, next_cursor}`` like every list."""
    with ctx.db.read() as s:
        page = listing.list_operations(s, limit=limit, cursor=cursor)
        return {"items": page.items, "next_cursor": page.next_cursor}
