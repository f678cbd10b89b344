"""``BootPlane``: the database side of network boot.

* ``decide()`` is the ``pxe.BootBackend`` of the in-process ``PxeService`` (and of
  ``GET /api/v1/boot/decide`` for a remote ``bronze pxe``);
* ``script()`` renders ``GET /boot.ipxe``: machine lookup by MAC, discovery (rate-limited),
  profile choice, a per-boot enrollment token for agent profiles, ``pxe.ipxe.render``.

Scripts carry no secret but that token (short-lived, single-use, stored hashed:
``server.agents.tokens``). Nothing from the request reaches a script unvalidated: the MAC and
UUID are parsed, profile values pass ``pxe.ipxe.BootProfile`` and the renderer refuses the rest.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pxe import BootAction, BootDecision, BootQuery, RenderContext, UnsafeValue, render
from server.agents import BootstrapTokens
from server.agents.dbstore import ENROLLMENT_PHASES
from server.boot import profiles
from server.boot.decide import (
    Candidate,
    ScriptKind,
    action_of,
    dhcp_decision,
    pick_profile,
    script_kind,
)
from server.boot.timeline import HttpKind, HttpSteps, Row, TimelineWriter
from server.inventory import machines as inventory
from server.inventory.db import Database
from server.inventory.models import BootProfile, Machine, MachineLabel, Nic, utcnow
from server.inventory.selectors import SelectorError, parse
from server.settings import ServerSettings
from server.types import EventKind, Phase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MachineInfo:
    id: str
    name: str
    phase: Phase
    labels: dict[str, str] = field(default_factory=dict)
    ip: str | None = None
    """The address reserved for the NIC that asked (``nics.ip``)."""


@dataclass(frozen=True)
class AgentEndpoints:
    """Where the agent dials (``bronze.server=`` / ``bronze.enroll=``)."""

    session: str
    enroll: str


@dataclass(frozen=True)
class Script:
    text: str
    action: BootAction
    profile: str | None
    machine: str | None


class UnsafeStoredProfile(Exception):
    """A stored profile failed validation at render time (field named, value never)."""

    def __init__(self, profile: str, field_name: str) -> None:
        super().__init__(f"profile {profile!r} has an unsafe value in {field_name}")
        self.profile, self.field = profile, field_name


def _machine_by_mac(s: Session, mac: str) -> MachineInfo | None:
    # Core rows, not ORM objects: this runs for every DHCP packet and script of a boot storm.
    row = s.execute(
        select(Machine.id, Machine.name, Machine.phase, Nic.ip)
        .join(Nic, Nic.machine_id == Machine.id)
        .where(Nic.mac == mac)
    ).first()
    if row is None:
        return None
    mid, name, phase, ip = row
    labels = dict(
        s.execute(
            select(MachineLabel.key, MachineLabel.value).where(MachineLabel.machine_id == mid)
        ).all()
    )
    return MachineInfo(mid, name, Phase(phase), labels, ip)


def _candidates(rows: list[BootProfile]) -> list[Candidate]:
    out = []
    for p in rows:
        try:
            out.append(Candidate(p.name, parse(p.selector)))
        except SelectorError:  # stored around the API: never matches, and says so
            log.error("boot profile with an invalid selector skipped profile=%s", p.name)
    return out


class BootPlane:
    def __init__(
        self,
        db: Database,
        settings: ServerSettings,
        base_url: str,
        timeline: TimelineWriter,
    ) -> None:
        self.db, self.settings, self.base_url = db, settings, base_url.rstrip("/")
        self.timeline = timeline
        self.steps = HttpSteps()

    # -- shared lookups ------------------------------------------------------------------------

    def _discovery_on(self, s: Session) -> bool:
        if not self.settings.boot_discovery:
            return False
        name = self.settings.boot_discovery_profile
        return s.scalar(select(BootProfile.id).where(BootProfile.name == name)) is not None

    def decide_sync(self, mac: str) -> BootDecision | None:
        """None: unknown and no discovery (HTTP 404 for ``bronze pxe``)."""
        with self.db.read() as s:
            m = _machine_by_mac(s, mac)
            # only unknown and discovered machines depend on discovery being on
            asks = m is None or m.phase is Phase.DISCOVERED
            discovery = self._discovery_on(s) if asks else False
        if m is None and not discovery:
            return None
        if m is None:
            return dhcp_decision(None, discovery)
        return dhcp_decision(m.phase, discovery, m.name, m.ip)

    async def decide(self, query: BootQuery) -> BootDecision:
        """``pxe.BootBackend``."""
        return await asyncio.to_thread(self.decide_sync, query.mac) or BootDecision()

    # -- discovery -----------------------------------------------------------------------------

    def _discover(self, mac: str, smbios_uuid: str | None) -> tuple[MachineInfo | None, str]:
        """Record an unknown MAC as a discovered machine, within the rate limits.
        Returns (machine or None, reason)."""
        st = self.settings
        try:
            with self.db.write() as s:
                m = _machine_by_mac(s, mac)
                if m is not None:
                    return m, "known"
                since = utcnow() - timedelta(minutes=1)
                discovered = Machine.phase == Phase.DISCOVERED.value
                recent = (
                    s.scalar(
                        select(func.count())
                        .select_from(Machine)
                        .where(discovered, Machine.created_at >= since)
                    )
                    or 0
                )
                if recent >= st.boot_discovery_rate:
                    return None, "discovery_rate_limited"
                total = s.scalar(select(func.count()).select_from(Machine).where(discovered)) or 0
                if total >= st.boot_discovery_max:
                    return None, "discovery_limit_reached"
                if smbios_uuid and s.scalar(
                    select(Machine.id).where(Machine.smbios_uuid == smbios_uuid)
                ):
                    smbios_uuid = None  # another machine claims it: keep the MAC, drop the UUID
                now = utcnow()
                row = Machine(
                    id=str(uuidlib.uuid4()),
                    name="discovered-" + mac.replace(":", ""),
                    smbios_uuid=smbios_uuid,
                    phase=Phase.DISCOVERED.value,
                    power_observed="unknown",
                    hardware={},
                    created_at=now,
                    updated_at=now,
                    nics=[],
                    label_rows=[],
                )
                inventory.set_nics(row, [(mac, None, None)])
                s.add(row)
                s.flush()
                inventory.record(
                    s,
                    actor="boot:discovery",
                    kind=EventKind.MACHINE_DISCOVERED,
                    machine=row,
                    message=f"machine {row.name} discovered by network boot",
                    data={"mac": mac, "uuid": smbios_uuid},
                )
                info = MachineInfo(row.id, row.name, Phase.DISCOVERED, {})
        except IntegrityError:  # the same MAC raced in from another request or replica
            with self.db.read() as s:
                return _machine_by_mac(s, mac), "known"
        return info, "discovered"

    # -- /boot.ipxe ----------------------------------------------------------------------------

    def _load(self, mac: str) -> tuple[MachineInfo | None, bool, list[BootProfile]]:
        with self.db.read() as s:
            m = _machine_by_mac(s, mac)
            rows = list(s.scalars(select(BootProfile)))
            s.expunge_all()
            return m, self._discovery_on(s), rows

    async def script(
        self,
        mac: str,
        *,
        smbios_uuid: str | None,
        arch: str | None,
        client_ip: str | None,
        tokens: BootstrapTokens,
        agent: AgentEndpoints | None,
    ) -> Script:
        """The iPXE script for ``mac``; raises ``UnsafeStoredProfile``."""
        m, discovery, rows = await asyncio.to_thread(self._load, mac)
        kind = script_kind(m.phase if m else None, discovery)
        reason: str | None = None
        if m is None and kind is ScriptKind.DISCOVERY:
            m, reason = await asyncio.to_thread(self._discover, mac, smbios_uuid)
            if m is None:
                kind = ScriptKind.NONE
            elif reason == "discovered":
                self.timeline.submit(
                    Row(
                        mac,
                        HttpKind.DISCOVERED.value,
                        time.time(),
                        "server",
                        client_ip,
                        {"machine": m.name},
                    )
                )
            else:  # a concurrent request created it meanwhile: decide again for its phase
                kind = script_kind(m.phase, discovery)
        by_name = {p.name: p for p in rows}
        profile: BootProfile | None = None
        if kind is ScriptKind.DISCOVERY:
            profile = by_name.get(self.settings.boot_discovery_profile)
        elif kind is ScriptKind.PROFILE and m is not None:
            candidates = _candidates(rows)
            chosen = pick_profile(
                candidates, m.labels, exclude=self.settings.boot_discovery_profile
            )
            profile = by_name.get(chosen) if chosen else None
            if profile is None:
                reason = "no_profile_matches"
        if kind in (ScriptKind.DISCOVERY, ScriptKind.PROFILE) and profile is None:
            kind = ScriptKind.NONE
        action = action_of(kind)
        token: str | None = None
        extra: list[str] = []
        if (
            profile is not None
            and m is not None
            and (profile.agent or profiles.uses_token(profile.args))
        ):
            if m.phase in ENROLLMENT_PHASES:
                boot_ref = f"pxe-{int(time.time())}-{secrets.token_hex(4)}"
                ttl = timedelta(seconds=self.settings.boot_token_ttl)
                token = await tokens.issue(m.id, boot_ref, ttl)
                if profile.agent:
                    extra = [f"bronze.machine={m.id}", f"bronze.token={token}"]
                    if agent is not None:
                        extra += [f"bronze.server={agent.session}", f"bronze.enroll={agent.enroll}"]
        try:
            ctx = RenderContext(mac=mac, server=self.base_url, uuid=smbios_uuid, token=token)
            if profile is not None:
                pp = profiles.to_pxe(
                    profile.name, profile.kernel, profile.initrds, profile.args, extra
                )
                text = render(action, ctx, pp)
            else:
                text = render(action, ctx)
        except UnsafeValue as exc:
            name = profile.name if profile is not None else "-"
            log.error(
                "unsafe boot profile refused at render profile=%s field=%s reason=%s mac=%s",
                name,
                exc.field,
                exc.reason,
                mac,
            )
            if token is not None and m is not None:
                await tokens.wipe(m.id)
            raise UnsafeStoredProfile(name, exc.field) from None
        detail: dict[str, object] = {"action": action.value, "arch": arch}
        if profile is not None:
            detail["profile"] = profile.name
        if m is not None:
            detail["phase"] = m.phase.value
            detail["machine"] = m.name
        if reason and reason not in ("known", "discovered"):
            detail["reason"] = reason
        self.timeline.submit(
            Row(mac, HttpKind.SCRIPT.value, time.time(), "server", client_ip, detail)
        )
        if client_ip and profile is not None:
            initrds = [n for n in map(profiles.asset_name, profile.initrds) if n]
            self.steps.script_served(client_ip, mac, profiles.asset_name(profile.kernel), initrds)
        return Script(text, action, profile.name if profile else None, m.name if m else None)
