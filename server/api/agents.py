"""Node agents and machine config over REST.

* ``/api/v1/config-patches``: layered JSON merge patches (fleet, selector, machine). Every change
  is validated by rendering each affected machine (422 with the failing JSON pointer), then the
  new config is pushed to the affected agents that are connected (the others get it when they
  connect: the session compares versions).
* ``/api/v1/machines/{key}/config`` (+ ``/config/dry-run``): the rendered config, provenance,
  desired and applied versions.
* ``/api/v1/machines/{key}/enrollment-token``, ``/agent``, ``/config/confirm``.

Several replicas: a config push or confirm is saved as a pending command in the database and
delivered by whichever replica holds the agent's session (its hub polls for commands saved by
others), so these work on any replica. Reboot and node ops: :mod:`server.api.nodes`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from server.agents import (
    AgentApiError,
    AgentApiServer,
    ApplyMode,
    BootstrapTokens,
    revocation,
)
from server.agents.dbstore import (
    ENROLLMENT_PHASES,
    DbAgentStore,
    load_patches,
    render_for,
    session_claimed,
)
from server.agents.revocation import RevokeReason
from server.api import nodes
from server.api.auth import Principal
from server.api.deps import Context, context, operator, reader
from server.api.nodes import agent_api
from server.api.schemas import Strict
from server.config import ConfigError, Layer, diff
from server.config.render import Rendered, needs_reboot, validate_patch
from server.errors import Conflict, Invalid, NotFound
from server.inventory import machines as inventory
from server.inventory.machines import iso
from server.inventory.models import AgentPendingCommand, AgentState, ConfigPatch, Machine, utcnow
from server.inventory.selectors import matches, parse, parse_param

router = APIRouter(tags=["agents"])

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$"


class ApplyParams(BaseModel):
    """How agents apply the configs a change produces (query parameters)."""

    mode: ApplyMode = ApplyMode.AUTO
    """auto, no-reboot, staged or try."""
    try_timeout_seconds: int = Field(default=120, ge=1, le=86_400)
    """``try`` only: reverted after this unless ``POST .../config/confirm`` arrives."""


class ConfirmIn(Strict):
    version: str | None = Field(default=None, min_length=1, max_length=64)
    """The tried version (default: the machine's desired version)."""


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


class DryRunIn(Strict):
    name: str = Field(default="dry-run", min_length=1, max_length=63)
    scope: Layer = Layer.MACHINE
    selector: str | None = Field(default=None, max_length=4096)
    priority: int = Field(default=0, ge=-1_000_000, le=1_000_000)
    patch: dict[str, Any]


class EnrollmentTokenIn(Strict):
    boot_ref: str = Field(default="manual", min_length=1, max_length=128)
    ttl_seconds: int = Field(default=1800, ge=60, le=86_400)


# -- helpers --------------------------------------------------------------------------------------


def _store(request: Request) -> DbAgentStore:
    store: DbAgentStore = request.app.state.agent_store
    return store


def _config_error(exc: ConfigError, machine: Machine | None = None) -> Invalid:
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
            raise _config_error(exc, m) from None
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
        raise _config_error(exc) from None

    def write() -> tuple[dict[str, Any], list[tuple[str, Rendered | None]]]:
        try:
            with ctx.db.write() as s:
                machine_id = inventory.get_machine(s, body.machine).id if body.machine else None
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
                    kind="config.patch.created",
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
                kind="config.patch.deleted",
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


# -- a machine's config ---------------------------------------------------------------------------


def _machine_config(
    ctx: Context, key: str, extra: DryRunIn | None = None
) -> tuple[Machine, Rendered | None, Rendered | None, AgentState | None]:
    with ctx.db.read() as s:
        m = inventory.get_machine(s, key)
        patches = load_patches(s)
        st = s.get(AgentState, m.id)
        try:
            current = render_for(patches, m)
        except ConfigError as exc:
            raise _config_error(exc, m) from None
        proposed = None
        if extra is not None:
            if extra.selector is not None:
                parse_param(extra.selector)
            try:
                validate_patch(extra.patch, extra.name)
            except ConfigError as exc:
                raise _config_error(exc) from None
            p = ConfigPatch(
                id="dry-run",
                name=extra.name,
                scope=extra.scope.value,
                selector=extra.selector,
                machine_id=m.id,
                priority=extra.priority,
                body=extra.patch,
                created_at=utcnow(),
                created_by="dry-run",
            )
            patches = [x for x in patches if x.name != extra.name] + [p]
            patches.sort(
                key=lambda x: ({"fleet": 0, "selector": 1, "machine": 2}[x.scope], x.priority)
            )
            try:
                proposed = render_for(patches, m)
            except ConfigError as exc:
                raise _config_error(exc, m) from None
        s.expunge_all()
        return m, current, proposed, st


def _changes(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [asdict(c) for c in diff(old or {}, new or {})]


@router.get("/api/v1/machines/{key}/config")
def machine_config(
    key: str,
    ctx: Annotated[Context, Depends(context)],
    _: Annotated[Principal, Depends(reader)],
    diff_against: Annotated[Literal["applied"] | None, Query(alias="diff")] = None,
) -> dict[str, Any]:
    m, r, _p, st = _machine_config(ctx, key)
    applied = st.applied_config_version if st else None
    out: dict[str, Any] = {
        "machine_id": m.id,
        "name": m.name,
        "managed": r is not None,
        "version": r.version if r else None,
        "config": r.document if r else None,
        "provenance": r.provenance if r else {},
        "patches": sorted(set(r.provenance.values())) if r else [],
        "desired_version": r.version if r else None,
        "applied_version": applied,
        "in_sync": r is None or applied == r.version,
    }
    if diff_against == "applied":
        known = st is not None and st.applied_config is not None
        out["diff"] = (
            _changes(st.applied_config if st else None, r.document if r else None)
            if known
            else None
        )
        out["applied_config_known"] = known
    return out


@router.post("/api/v1/machines/{key}/config/dry-run")
def machine_config_dry_run(
    key: str,
    body: DryRunIn,
    ctx: Annotated[Context, Depends(context)],
    _: Annotated[Principal, Depends(reader)],
) -> dict[str, Any]:
    """Render the machine's config as if ``patch`` were added (or replaced the patch of that
    name): the result, what changes, and which changes need a reboot. Nothing is stored."""
    m, cur, new, _st = _machine_config(ctx, key, body)
    old_doc = cur.document if cur else None
    new_doc = new.document if new else None
    return {
        "machine_id": m.id,
        "name": m.name,
        "current_version": cur.version if cur else None,
        "version": new.version if new else None,
        "config": new_doc,
        "provenance": new.provenance if new else {},
        "changes": _changes(old_doc, new_doc),
        "reboot_required": needs_reboot(old_doc or {}, new_doc or {}),
    }


# -- the agent ------------------------------------------------------------------------------------


@router.post("/api/v1/machines/{key}/enrollment-token", status_code=201)
async def issue_enrollment_token(
    key: str,
    request: Request,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
    body: EnrollmentTokenIn | None = None,
) -> dict[str, Any]:
    """A single-use bootstrap token for the machine's next enrollment (shown once; a new one
    replaces the previous)."""
    body = body or EnrollmentTokenIn()

    def lookup() -> Machine:
        with ctx.db.read() as s:
            m = inventory.get_machine(s, key)
            s.expunge(m)
            return m

    m = await run_in_threadpool(lookup)
    if m.phase not in ENROLLMENT_PHASES:
        raise Conflict(message=f"machine {m.name} is in phase {m.phase}: its agent may not enroll")
    tokens: BootstrapTokens = request.app.state.agent_tokens
    ttl = timedelta(seconds=body.ttl_seconds)
    token = await tokens.issue(m.id, body.boot_ref, ttl)
    expires = utcnow() + ttl

    def audit() -> None:
        with ctx.db.write() as s:
            inventory.record(
                s,
                actor=who.actor,
                kind="agent.token.issued",
                machine_id=m.id,
                message="agent enrollment token issued",
                data={"boot_ref": body.boot_ref, "ttl_seconds": body.ttl_seconds},
            )

    await run_in_threadpool(audit)
    out: dict[str, Any] = {
        "machine_id": m.id,
        "name": m.name,
        "token": token,
        "boot_ref": body.boot_ref,
        "expires_at": inventory.iso(expires),
    }
    api: AgentApiServer | None = request.app.state.agent_api
    if api is not None:
        host = ctx.settings.effective_agent_server_names[0]
        out["server"] = f"{host}:{api.session_port}"
        out["enroll"] = f"{host}:{api.enroll_port}"
        out["kernel_args"] = (
            f"bronze.machine={m.id} bronze.token={token} "
            f"bronze.server={out['server']} bronze.enroll={out['enroll']}"
        )
    return out


@router.get("/api/v1/machines/{key}/agent")
def machine_agent(
    key: str,
    request: Request,
    ctx: Annotated[Context, Depends(context)],
    _: Annotated[Principal, Depends(reader)],
) -> dict[str, Any]:
    with ctx.db.read() as s:
        m = inventory.get_machine(s, key)
        st = s.get(AgentState, m.id)
        pending = (
            s.scalar(
                select(func.count())
                .select_from(AgentPendingCommand)
                .where(AgentPendingCommand.machine_id == m.id)
            )
            or 0
        )
        api: AgentApiServer | None = request.app.state.agent_api
        here = api is not None and api.hub.is_connected(m.id)
        connected = here or (
            st is not None
            and session_claimed(st.connected, st.last_seen, ctx.settings.agent_heartbeat_interval)
        )
        # Which replica holds the session: node ops are served only there.
        session = "this-replica" if here else "another-replica" if connected else None
        if st is None:
            return {
                "machine_id": m.id,
                "name": m.name,
                "enrolled": False,
                "connected": connected,
                "session": session,
                "pending_commands": pending,
            }
        return {
            "machine_id": m.id,
            "name": m.name,
            "enrolled": st.cert_serial is not None,
            "connected": connected,
            "session": session,
            "agent_version": st.agent_version,
            "boot_id": st.boot_id,
            "last_seen": iso(st.last_seen),
            "hello_at": iso(st.hello_at),
            "disconnected_at": iso(st.disconnected_at),
            "config": {
                "desired_version": st.desired_config_version,
                "applied_version": st.applied_config_version,
                "staged_version": st.staged_config_version,
                "in_sync": st.desired_config_version is None
                or st.desired_config_version == st.applied_config_version,
            },
            "certificate": {
                "serial": st.cert_serial,
                "not_after": iso(st.cert_not_after),
                "revoked_at": iso(st.cert_revoked_at),
            },
            "identity_conflict": st.identity_conflict,
            "last_command": None
            if st.last_command_id is None
            else {
                "id": st.last_command_id,
                "ok": st.last_command_ok,
                "error": st.last_command_error,
                "at": iso(st.last_command_at),
            },
            "pending_commands": pending,
        }


@router.post("/api/v1/machines/{key}/agent/revoke")
async def revoke_agent_certificate(
    key: str,
    request: Request,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    """Revoke the machine's agent client certificates (``agent.certificate.revoked``): they no
    longer open sessions, a live session is closed (here at once, on another replica within its
    sweep). The agent must enroll again with a new bootstrap token."""

    def write() -> tuple[str, str, list[str]]:
        with ctx.db.write() as s:
            m = inventory.get_machine(s, key)
            serials = revocation.revoke(
                s, m.id, reason=RevokeReason.OPERATOR, actor=who.actor, always_record=True
            )
            return m.id, m.name, serials

    mid, name, serials = await run_in_threadpool(write)
    api: AgentApiServer | None = request.app.state.agent_api
    closed = api is not None and api.hub.close_session(mid)
    return {"machine_id": mid, "name": name, "revoked_serials": serials, "session_closed": closed}


@router.post("/api/v1/machines/{key}/config/confirm", status_code=202)
async def machine_config_confirm(
    key: str,
    request: Request,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
    body: ConfirmIn | None = None,
) -> dict[str, Any]:
    """Confirm a config applied in ``try`` mode before its timeout (else the node reverts it).
    Queued like a reboot; when this replica holds the session the agent's answer is awaited
    for up to 10 s and returned in ``result``."""
    body = body or ConfirmIn()
    m, r, _p, _st = await run_in_threadpool(_machine_config, ctx, key)
    version = body.version or (r.version if r else None)
    if version is None:
        raise Invalid(
            message=f"machine {m.name} has no config to confirm", details={"field": "version"}
        )
    api = agent_api(request)
    command_id = await api.hub.confirm_config(m.id, version)

    def audit() -> None:
        with ctx.db.write() as s:
            inventory.record(
                s,
                actor=who.actor,
                kind="agent.config.confirm",
                machine_id=m.id,
                message=f"config {version} confirmed",
                data={"command_id": command_id},
            )

    await run_in_threadpool(audit)
    out: dict[str, Any] = {
        "machine_id": m.id,
        "version": version,
        "command_id": command_id,
        "delivery": "queued",
        "result": None,
    }
    if api.hub.is_connected(m.id):
        out["delivery"] = "sent"
        try:
            res = await api.hub.wait_result(command_id, 10)
            out["result"] = {
                "ok": res.ok,
                "error": res.error or None,
                "applied_version": res.applied_version or None,
            }
        except AgentApiError:
            pass
    return out


router.include_router(nodes.router)
