"""Registering a rack: ``POST /api/v1/machines:import``, inspection through the BMC
(``POST /api/v1/machines/{key}/inspect``, ``POST /api/v1/inspect``) and accepting discovered
machines (``POST /api/v1/machines/{key}/accept``). See docs/provisioning.md.

Import rows are validated one by one with the very model of ``POST /api/v1/machines``
(:class:`~server.api.schemas.MachineCreate`) and the same BMC address policy, so that every bad
row is reported with its row number instead of the first error failing the whole body. The
password travels in the body (the CLI reads the file or variable the manifest names); a row that
names a password *file* or *variable* is refused: the server never reads a path it is given.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field, ValidationError
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from server.api.auth import Principal
from server.api.deps import Context, context, operator
from server.api.schemas import DnsLabel, Labels, MachineCreate, Strict
from server.errors import ApiError, Invalid
from server.inventory import accept_rules, manifest_import
from server.inventory import machines as inventory
from server.inventory.manifest_import import BmcSpec, Row, RowError
from server.inventory.selectors import parse_param
from server.power.addresses import checked_bmc_address
from server.power.inspect import InspectService

router = APIRouter(tags=["registration"])

MAX_ROWS = 5000
REFUSED_BMC_KEYS = ("password_file", "password_env")


class RowsInvalid(ApiError):
    status, code, template = 422, "invalid_rows", "{count} of {total} rows are invalid; {what}"


class ImportRequest(Strict):
    machines: list[dict[str, Any]] = Field(max_length=MAX_ROWS)
    """One object per row, shaped like the body of ``POST /api/v1/machines``."""
    rows: list[int] | None = None
    """The rows' numbers in the source file (for messages); default 1, 2, 3..."""


class AcceptRequest(Strict):
    name: DnsLabel | None = None
    labels: Labels = Field(default_factory=dict, max_length=64)


class InspectRequest(Strict):
    selector: str = Field(min_length=1, max_length=4096)
    max_parallel: int = Field(default=16, ge=1, le=256)


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def parse_row(ctx: Context, number: int, raw: dict[str, Any]) -> Row | list[RowError]:
    """One raw row -> a valid :class:`Row`, or its errors (never raises)."""
    name = raw.get("name") if isinstance(raw.get("name"), str) else None
    bmc = raw.get("bmc")
    if isinstance(bmc, dict) and any(k in bmc for k in REFUSED_BMC_KEYS):
        return [
            RowError(
                number,
                name,
                "bmc.password",
                "the server never reads a password file or variable: send the password itself "
                "(bronze machines import reads the file or variable the manifest names)",
            )
        ]
    try:
        body = MachineCreate.model_validate(raw)
    except ValidationError as exc:
        return [
            RowError(number, name, _loc(e["loc"]) or None, e["msg"])
            for e in exc.errors(include_url=False, include_input=False)
        ]
    spec = None
    if body.bmc is not None:
        b = body.bmc
        try:
            host, port = checked_bmc_address(
                ctx.settings, b.address, b.port, driver=b.driver, scheme=b.scheme
            )
        except Invalid as exc:
            field = exc.details.get("field") if isinstance(exc.details, dict) else "bmc"
            return [RowError(number, body.name, field, exc.message)]
        spec = BmcSpec(
            driver=b.driver.value,
            address=host,
            port=port,
            scheme=b.scheme,
            username=b.username,
            password=None if b.password is None else b.password.get_secret_value(),
            verify_tls=b.verify_tls,
            ca_bundle=b.ca_bundle,
        )
    return Row(
        number=number,
        name=body.name,
        uuid=body.uuid,
        serial=body.serial,
        nics=tuple(n.spec for n in body.nics),
        labels=dict(body.labels),
        phase=body.phase.value,
        bmc=spec,
        hardware=dict(body.hardware),
    )


class _DryRun(Exception):
    """Rolls a dry run's transaction back, carrying what it would have done."""

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__("dry run")
        self.result = result


def run_import(
    ctx: Context, body: ImportRequest, partial: bool, actor: str, dry_run: bool = False
) -> dict[str, Any]:
    numbers = body.rows or list(range(1, len(body.machines) + 1))
    if len(numbers) != len(body.machines) or len(set(numbers)) != len(numbers):
        raise Invalid(
            message="rows must give one distinct number per machine", details={"field": "rows"}
        )
    rows: list[Row] = []
    errors: list[RowError] = []
    for number, raw in zip(numbers, body.machines, strict=True):
        parsed = parse_row(ctx, number, raw)
        if isinstance(parsed, Row):
            rows.append(parsed)
        else:
            errors.extend(parsed)
    try:
        with ctx.db.write() as s:
            planned, conflicts = manifest_import.plan(s, rows)
            errors = sorted(errors + conflicts, key=lambda e: e.row)
            bad = {e.row for e in errors}
            if bad and not partial and not dry_run:
                raise RowsInvalid(
                    count=len(bad),
                    total=len(numbers),
                    what="nothing was written (fix them, or import with partial=true)",
                    details={"errors": [e.view() for e in errors]},
                )
            out = manifest_import.apply(s, planned, ctx.secrets, actor)
            result = {
                "written": bool(out.created or out.updated or out.accepted) and not dry_run,
                "dry_run": dry_run,
                "created": out.created,
                "updated": out.updated,
                "unchanged": out.unchanged,
                "accepted": out.accepted,
                "errors": [e.view() for e in errors],
            }
            if dry_run:
                raise _DryRun(result)  # rolls the transaction back
    except _DryRun as done:
        return done.result
    except IntegrityError as exc:  # a concurrent write took a name or MAC: nothing written
        raise inventory.conflict_from(exc) from None
    return result


@router.post("/api/v1/machines:import")
def import_machines(
    body: ImportRequest,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
    partial: Annotated[bool, Query()] = False,
    dry_run: Annotated[bool, Query()] = False,
) -> dict[str, Any]:
    """All rows or nothing (422 ``invalid_rows`` listing each bad row), or with
    ``partial=true`` the valid rows (200, the bad ones under ``errors``). ``dry_run=true``
    checks everything and says what would happen (200, ``errors`` listed), writing nothing."""
    return run_import(ctx, body, partial, who.actor, dry_run)


@router.post("/api/v1/machines/{key}/accept")
def accept_machine(
    key: str,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
    body: AcceptRequest | None = None,
) -> dict[str, Any]:
    """A discovered machine becomes ``registered``, renamed and labelled (no body: kept as
    named)."""
    body = body or AcceptRequest()
    try:
        with ctx.db.write() as s:
            m = inventory.get_machine(s, key)
            accept_rules.accept(s, m, body.name, body.labels, who.actor)
            s.flush()
            return inventory.machine_views(s, [m.id])[0]
    except IntegrityError as exc:
        raise inventory.conflict_from(exc) from None


def inspector(request: Request) -> InspectService:
    svc = getattr(request.app.state, "inspect", None)
    if svc is None:
        ctx: Context = request.app.state.ctx
        svc = request.app.state.inspect = InspectService(ctx.settings, ctx.db, ctx.secrets)
    return svc


@router.post("/api/v1/machines/{key}/inspect")
async def inspect_machine(
    key: str,
    svc: Annotated[InspectService, Depends(inspector)],
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    """Read the host's identity and hardware through its BMC now (no boot)."""
    targets = await run_in_threadpool(svc.targets, [key], None)
    return (await svc.inspect(targets, who.actor, 1))[0]


@router.post("/api/v1/inspect")
async def inspect_selected(
    body: InspectRequest,
    svc: Annotated[InspectService, Depends(inspector)],
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    """Inspect every machine the selector matches, ``max_parallel`` BMCs at once."""
    reqs = parse_param(body.selector)
    targets = await run_in_threadpool(svc.targets, None, reqs)
    return {"items": await svc.inspect(targets, who.actor, body.max_parallel)}
