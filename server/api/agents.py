"""Node agents and a machine's config over REST.

* ``/api/v1/machines/{key}/config`` (+ ``/config/dry-run``): the rendered config, provenance,
  desired and applied versions; ``/config/confirm`` confirms a config tried in ``try`` mode.
* ``/api/v1/machines/{key}/enrollment-token``, ``/agent``.

Config patches and their push to agents: :mod:`server.api.config`. Reboot and node ops:
:mod:`server.api.nodes`. A confirm is saved as a pending command in the database and delivered
by whichever replica holds the agent's session, so it works on any replica.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from server.agents import (
    AgentApiError,
    AgentApiServer,
    BootstrapTokens,
    revocation,
)
from server.agents.dbstore import ENROLLMENT_PHASES
from server.agents.liveness import session_claimed
from server.agents.revocation import RevokeReason
from server.api import nodes
from server.api.auth import Principal
from server.api.config import config_error
from server.api.deps import Context, context, operator, reader
from server.api.nodes import agent_api
from server.api.schemas import Strict
from server.config import ConfigError, Layer, diff
from server.config.render import Rendered, needs_reboot, validate_patch
from server.config.stored import load_patches, render_for
from server.errors import Conflict, Invalid
from server.inventory import machines as inventory
from server.inventory.machines import iso
from server.inventory.models import AgentPendingCommand, AgentState, ConfigPatch, Machine, utcnow
from server.inventory.selectors import parse_param
from server.types import EventKind

router = APIRouter(tags=["agents"])


class ConfirmIn(Strict):
    version: str | None = Field(default=None, min_length=1, max_length=64)
    """The tried version (default: the machine's desired version)."""


class DryRunIn(Strict):
    name: str = Field(default="dry-run", min_length=1, max_length=63)
    scope: Layer = Layer.MACHINE
    selector: str | None = Field(default=None, max_length=4096)
    priority: int = Field(default=0, ge=-1_000_000, le=1_000_000)
    patch: dict[str, Any]


class EnrollmentTokenIn(Strict):
    boot_ref: str = Field(default="manual", min_length=1, max_length=128)
    ttl_seconds: int = Field(default=1800, ge=60, le=86_400)


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
            raise config_error(exc, m) from None
        proposed = None
        if extra is not None:
            if extra.selector is not None:
                parse_param(extra.selector)
            try:
                validate_patch(extra.patch, extra.name)
            except ConfigError as exc:
                raise config_error(exc) from None
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
                raise config_error(exc, m) from None
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
                kind=EventKind.AGENT_TOKEN_ISSUED,
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
        return _agent_view(m, st, connected, session, pending)


def _agent_view(
    m: Machine, st: AgentState | None, connected: bool, session: str | None, pending: int
) -> dict[str, Any]:
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
        "os": {
            "image_digest": st.image_digest,
            "slot": st.slot,
            "last_good_digest": st.last_good_digest,
        },
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
                kind=EventKind.AGENT_CONFIG_CONFIRM,
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
