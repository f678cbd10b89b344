"""Config patches over REST: ``/api/v1/config-patches``.

Layered JSON merge patches (fleet, selector, machine; ``server/config``). Every change is
validated by rendering each affected machine (422 with the failing JSON pointer), then the new
config is pushed to the affected agents that are connected (the others get it when they connect:
the session compares versions).

Several replicas: a push is saved as a pending command in the database and delivered by
whichever replica holds the agent's session (its hub polls for commands saved by others), so
this works on any replica. A machine's rendered config, dry-run and confirm:
:mod:`server.api.agents`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from server.agents import AgentApiServer, ApplyMode
from server.agents.dbstore import DbAgentStore
from server.agents.liveness import session_claimed
from server.api.auth import Principal
from server.api.deps import Context, context, operator, reader
from server.api.images import trusted_keys
from server.api.schemas import Strict
from server.boot import images
from server.config import ConfigError, Layer
from server.config.render import Rendered, validate_patch
from server.config.stored import load_patches, render_for
from server.errors import Conflict, Invalid, NotFound
from server.inventory import machines as inventory
from server.inventory.models import AgentState, ConfigPatch, Machine, utcnow
from server.inventory.selectors import matches, parse, parse_param
from server.types import EventKind

router = APIRouter(tags=["agents"])

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$"


class ApplyParams(BaseModel):
    """How agents apply the configs a change produces (query parameters)."""

    mode: ApplyMode = ApplyMode.AUTO
    """auto, no-reboot, staged or try."""
    try_timeout_seconds: int = Field(default=120, ge=1, le=86_400)
    """``try`` only: reverted after this unless ``POST .../config/confirm`` arrives."""


class ConfigPatchIn(Strict):
    name: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN)
    scope: Layer
    selector: str | None = Field(default=None, max_length=4096)
    """Label selector (scope ``selector`` only)."""
    machine: str | None = Field(default=None, max_length=63)
    """Machine name or id (scope ``machine`` only)."""
    priority: int = Field(default=0, ge=-1_000_000, le=1_000_000)
    """Order within a scope: lower first (later patches win)."""
    patch: dict[str, Any]


# -- helpers --------------------------------------------------------------------------------------


def _store(request: Request) -> DbAgentStore:
    store: DbAgentStore = request.app.state.agent_store
    return store


def config_error(exc: ConfigError, machine: Machine | None = None) -> Invalid:
    details: dict[str, Any] = exc.as_dict()
    if machine is not None:
        details["machine"] = machine.name
    where = f" (machine {machine.name})" if machine is not None else ""
    return Invalid(message=f"invalid config{where}: {exc}", details=details)


def _patch_view(p: ConfigPatch) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "scope": p.scope,
        "selector": p.selector,
        "machine_id": p.machine_id,
        "priority": p.priority,
        "patch": p.body,
        "created_at": inventory.iso(p.created_at),
        "created_by": p.created_by,
    }


def _affected(s: Session, p: ConfigPatch) -> list[Machine]:
    if p.scope == Layer.MACHINE.value:
        m = s.get(Machine, p.machine_id) if p.machine_id else None
        return [m] if m is not None else []
    machines = list(s.scalars(select(Machine).order_by(Machine.name)))
    if p.scope == Layer.SELECTOR.value:
        reqs = parse(p.selector or "")
        machines = [m for m in machines if matches(reqs, m.labels)]
    return machines


def _render_all(s: Session, machines: list[Machine]) -> list[tuple[str, Rendered | None]]:
    """Render every machine against the session's patches; 422 on the first invalid one."""
    patches = load_patches(s)
    out = []
    for m in machines:
        try:
            out.append((m.id, render_for(patches, m)))
        except ConfigError as exc:
            raise config_error(exc, m) from None
    return out


def _agent_states(ctx: Context, ids: Sequence[str]) -> dict[str, tuple[bool, str | None]]:
    """``machine id -> (connected to some replica, applied version)`` as the database knows."""
    out: dict[str, tuple[bool, str | None]] = {}
    hb = ctx.settings.agent_heartbeat_interval
    with ctx.db.read() as s:
        for i in range(0, len(ids), 1000):
            rows = s.execute(
                select(
                    AgentState.machine_id,
                    AgentState.connected,
                    AgentState.last_seen,
                    AgentState.applied_config_version,
                ).where(AgentState.machine_id.in_(ids[i : i + 1000]))
            )
            out.update(
                {
                    r.machine_id: (
                        session_claimed(r.connected, r.last_seen, hb),
                        r.applied_config_version,
                    )
                    for r in rows
                }
            )
    return out


async def _push(
    request: Request,
    ctx: Context,
    rendered: list[tuple[str, Rendered | None]],
    apply: ApplyParams,
) -> dict[str, int]:
    """Record the desired versions and queue them for the agents. ``pushed``: sent now (session
    on this replica); ``queued``: saved for an agent held by another replica (its hub sends it
    within a second) or, for a mode other than ``auto``, for an agent not connected now (so it
    gets the change in that mode when it connects, not as a plain drift correction)."""
    todo = [(mid, r) for mid, r in rendered if r is not None]
    await run_in_threadpool(_store(request).note_pushed_many, todo)
    api: AgentApiServer | None = request.app.state.agent_api
    if api is None:
        return {"pushed": 0, "queued": 0}
    states = await run_in_threadpool(_agent_states, ctx, [mid for mid, _ in todo])
    counts = {"pushed": 0, "queued": 0}
    for mid, r in todo:
        connected, applied = states.get(mid, (False, None))
        if applied == r.version:
            continue
        here = api.hub.is_connected(mid)
        if not (here or connected or apply.mode is not ApplyMode.AUTO):
            continue  # gets it when it connects (the session compares versions)
        await api.hub.push_config(
            mid,
            r.version,
            r.canonical_json,
            apply.mode,
            try_timeout_seconds=apply.try_timeout_seconds,
        )
        counts["pushed" if here else "queued"] += 1
    return counts


# -- config patches -------------------------------------------------------------------------------


@router.get("/api/v1/config-patches")
def list_config_patches(
    ctx: Annotated[Context, Depends(context)],
    _: Annotated[Principal, Depends(reader)],
) -> list[dict[str, Any]]:
    with ctx.db.read() as s:
        return [_patch_view(p) for p in load_patches(s)]


def _check_patch_in(body: ConfigPatchIn) -> None:
    """422 naming the field: a selector or machine given for the wrong scope, a bad selector,
    an invalid patch."""
    if (body.scope is Layer.SELECTOR) != (body.selector is not None):
        raise Invalid(
            message="selector is required for scope selector and only there",
            details={"field": "selector"},
        )
    if (body.scope is Layer.MACHINE) != (body.machine is not None):
        raise Invalid(
            message="machine is required for scope machine and only there",
            details={"field": "machine"},
        )
    if body.selector is not None:
        parse_param(body.selector)
    try:
        validate_patch(body.patch, body.name)
    except ConfigError as exc:
        raise config_error(exc) from None


def _check_image(s: Session, ctx: Context, patch: dict[str, Any]) -> None:
    """``install.image`` must name an image that exists and, with trusted keys configured, is
    signed (422 naming the field): the agent would refuse it anyway, after the fact."""
    install = patch.get("install")
    name = install.get("image") if isinstance(install, dict) else None
    if isinstance(name, str):
        images.get_for_use(s, name, trusted_keys(ctx.settings), field="patch.install.image")


@router.post("/api/v1/config-patches", status_code=201)
async def create_config_patch(
    body: ConfigPatchIn,
    request: Request,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
    apply: Annotated[ApplyParams, Query()],
) -> dict[str, Any]:
    """Add a patch; every affected machine is re-rendered (422 on the first invalid one) and the
    new configs go to the agents in the apply ``mode`` given (query: ``mode``,
    ``try_timeout_seconds``)."""
    _check_patch_in(body)

    def write() -> tuple[dict[str, Any], list[tuple[str, Rendered | None]]]:
        try:
            with ctx.db.write() as s:
                machine_id = inventory.get_machine(s, body.machine).id if body.machine else None
                _check_image(s, ctx, body.patch)
                p = ConfigPatch(
                    id=str(uuid.uuid4()),
                    name=body.name,
                    scope=body.scope.value,
                    selector=body.selector,
                    machine_id=machine_id,
                    priority=body.priority,
                    body=body.patch,
                    created_at=utcnow(),
                    created_by=who.actor,
                )
                s.add(p)
                s.flush()
                rendered = _render_all(s, _affected(s, p))
                inventory.record(
                    s,
                    actor=who.actor,
                    kind=EventKind.CONFIG_PATCH_CREATED,
                    machine_id=machine_id,
                    message=f"config patch {p.name} ({p.scope}) created",
                    data={
                        "patch": p.name,
                        "scope": p.scope,
                        "selector": p.selector,
                        "machines": len(rendered),
                    },
                )
                return _patch_view(p), rendered
        except IntegrityError:
            raise Conflict(message=f"config patch {body.name!r} already exists") from None

    view, rendered = await run_in_threadpool(write)
    view["machines"] = len(rendered)
    view["mode"] = apply.mode.value
    view.update(await _push(request, ctx, rendered, apply))
    return view


@router.delete("/api/v1/config-patches/{patch_id}")
async def delete_config_patch(
    patch_id: str,
    request: Request,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
    apply: Annotated[ApplyParams, Query()],
) -> dict[str, Any]:
    def write() -> tuple[dict[str, Any], list[tuple[str, Rendered | None]]]:
        with ctx.db.write() as s:
            p = s.get(ConfigPatch, patch_id) or s.scalar(
                select(ConfigPatch).where(ConfigPatch.name == patch_id)
            )
            if p is None:
                raise NotFound(kind="config patch", key=patch_id)
            view = _patch_view(p)
            machines = _affected(s, p)
            s.delete(p)
            s.flush()
            rendered = _render_all(s, machines)
            inventory.record(
                s,
                actor=who.actor,
                kind=EventKind.CONFIG_PATCH_DELETED,
                machine_id=p.machine_id,
                message=f"config patch {p.name} ({p.scope}) deleted",
                data={"patch": p.name, "scope": p.scope, "machines": len(rendered)},
            )
            return view, rendered

    view, rendered = await run_in_threadpool(write)
    view["machines"] = len(rendered)
    # A machine left without patches keeps its last config (it becomes unmanaged).
    view["mode"] = apply.mode.value
    view.update(await _push(request, ctx, rendered, apply))
    return view
