"""``BootPlane``: the database side of network boot.

* ``decide()`` is the ``pxe.BootBackend`` of the in-process ``PxeService`` (and of
  ``GET /api/v1/boot/decide`` for a remote ``bronze pxe``);
* ``script()`` renders ``GET /boot.ipxe``: the I/O around the pure ``server.boot.plan``
  (machine lookup by MAC, discovery (rate-limited), the enrollment token bound to the boot and
  address DHCP recorded in ``seen`` (fed by ``observe``/``sink``), ``pxe.ipxe.render``, timeline).

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pxe import (
    BootAction,
    BootDecision,
    BootQuery,
    RenderContext,
    TimelineEvent,
    TimelineSink,
    UnsafeValue,
    render,
)
from server.agents import BootstrapTokens
from server.agents.dbstore import ENROLLMENT_PHASES
from server.boot import profiles
from server.boot.decide import Candidate, dhcp_decision
from server.boot.images import image_boot
from server.boot.plan import (
    MachineView,
    ProfileView,
    ScriptPlan,
    ScriptQuery,
    SeenLease,
    needs_discovery,
    plan_script,
)
from server.boot.seen import SeenLeases
from server.boot.timeline import HttpSteps, Row, TimelineWriter
from server.inventory import accept_rules
from server.inventory import machines as inventory
from server.inventory.db import Database
from server.inventory.models import BootProfile, Image, Machine, MachineLabel, Nic, utcnow
from server.inventory.selectors import SelectorError, parse
from server.metrics import BOOT_DECISIONS
from server.settings import ServerSettings
from server.types import EventKind, Phase

log = logging.getLogger(__name__)

BOOT_WAIT_SECONDS = 2.0
"""How long a script request naming a boot DHCP has not reported yet waits for that report."""


@dataclass(frozen=True)
class MachineInfo:
    id: str
    name: str
    phase: Phase
    labels: dict[str, str] = field(default_factory=dict)
    ip: str | None = None
    """The address reserved for the NIC that asked (``nics.ip``)."""
    netboot: bool = False
    """Diskless (``machines.boot_from = network``)."""
    image: str | None = None
    """Its own image: ``trial_image`` while a netboot upgrade tries one, else ``image``."""


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
        select(
            Machine.id,
            Machine.name,
            Machine.phase,
            Nic.ip,
            Machine.boot_from,
            func.coalesce(Machine.trial_image, Machine.image),
        )
        .join(Nic, Nic.machine_id == Machine.id)
        .where(Nic.mac == mac)
    ).first()
    if row is None:
        return None
    mid, name, phase, ip, boot_from, image = row
    labels = dict(
        s.execute(
            select(MachineLabel.key, MachineLabel.value).where(MachineLabel.machine_id == mid)
        ).all()
    )
    return MachineInfo(mid, name, Phase(phase), labels, ip, boot_from == "network", image)


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
        token_key: bytes | None = None,
    ) -> None:
        self.db, self.settings, self.base_url = db, settings, base_url.rstrip("/")
        self.timeline = timeline
        self.steps = HttpSteps()
        self.seen = SeenLeases(ttl=float(settings.boot_token_ttl))
        # Replicas sharing a database must share this key (app.py derives it from the secret
        # key) to hand out the same token again for one boot; a random one still binds tokens.
        self.token_key = token_key if token_key is not None else secrets.token_bytes(32)
        self._token_locks: dict[str, asyncio.Lock] = {}

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
        decision = await asyncio.to_thread(self.decide_sync, query.mac) or BootDecision()
        BOOT_DECISIONS.labels("dhcp", "boot" if decision.allow_boot else "no-boot").inc()
        return decision

    def _known_macs_sync(self) -> frozenset[str]:
        with self.db.read() as s:
            return frozenset(s.scalars(select(Nic.mac)))

    async def known_macs(self) -> frozenset[str]:
        """Every registered MAC (``pxe.dhcp.admission``: answered first during a flood)."""
        return await asyncio.to_thread(self._known_macs_sync)

    # -- discovery -----------------------------------------------------------------------------

    def _discover(self, mac: str, smbios_uuid: str | None) -> tuple[MachineInfo | None, str]:
        """Record an unknown MAC as a discovered machine, within the rate limits.
        Returns (machine or None, reason)."""
        # The limits are checked in a read transaction first: a flood of unknown MACs must not
        # turn into a write transaction each (SQLite has one writer; the REST API shares it).
        with self.db.read() as s:
            m = _machine_by_mac(s, mac)
            if m is not None:
                return m, "known"
            limited = self._discovery_limited(s)
        if limited is not None:
            return None, limited
        try:
            with self.db.write() as s:
                m = _machine_by_mac(s, mac)
                if m is not None:
                    return m, "known"
                limited = self._discovery_limited(s)
                if limited is not None:
                    return None, limited
                if accept_rules.adopt_mac(s, mac, smbios_uuid, "boot:discovery") is not None:
                    return _machine_by_mac(s, mac), "known"  # an imported machine's UUID
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

    def _discovery_limited(self, s: Session) -> str | None:
        """Which discovery limit is reached, if any (counted in the database)."""
        st = self.settings
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
            return "discovery_rate_limited"
        total = s.scalar(select(func.count()).select_from(Machine).where(discovered)) or 0
        if total >= st.boot_discovery_max:
            return "discovery_limit_reached"
        return None

    # -- /boot.ipxe ----------------------------------------------------------------------------

    def _load(
        self, mac: str
    ) -> tuple[MachineInfo | None, bool, list[BootProfile], dict[str, Image]]:
        """The machine, whether discovery is on, the profiles (detached) and the images they or
        the machine name."""
        with self.db.read() as s:
            m = _machine_by_mac(s, mac)
            rows = list(s.scalars(select(BootProfile)))
            named = {p.image for p in rows if p.image} | ({m.image} if m and m.image else set())
            found = {i.name: i for i in s.scalars(select(Image).where(Image.name.in_(named)))}
            s.expunge_all()
            return m, self._discovery_on(s), rows, found

    def observe(self, mac: str | None, kind: str, detail: Mapping[str, Any]) -> None:
        """A DHCP step (in-process sink or a remote ``bronze pxe``'s timeline): ACKs of script
        URLs are remembered as the MAC's boot (``server.boot.seen``)."""
        if mac is not None:
            self.seen.observe(mac, kind, detail)

    def sink(self, forward: TimelineSink) -> TimelineSink:
        """A ``pxe.TimelineSink`` that observes each event, then hands it to ``forward``."""

        def sink(event: TimelineEvent) -> None:
            self.observe(event.mac, event.kind.value, event.detail)
            forward(event)

        return sink

    async def script(
        self,
        mac: str,
        *,
        smbios_uuid: str | None,
        arch: str | None,
        client_ip: str | None,
        tokens: BootstrapTokens,
        agent: AgentEndpoints | None,
        boot: str | None = None,
    ) -> Script:
        """The iPXE script for ``mac`` (``server.boot.plan`` decides; this does the I/O);
        raises ``UnsafeStoredProfile``."""
        m, discovery, rows, images = await asyncio.to_thread(self._load, mac)
        outcome: str | None = None
        if needs_discovery(_view(m), discovery):
            m, outcome = await asyncio.to_thread(self._discover, mac, smbios_uuid)
        query = ScriptQuery(mac, client_ip, arch, boot)
        views = [ProfileView(p.name, p.agent, profiles.uses_token(p.args), p.image) for p in rows]
        lease = self.seen.get(mac)
        plan = self._plan(query, m, discovery, outcome, views, rows, lease)
        if plan.wait_for_boot:  # its DHCP ACK may still be on its way from a remote bronze pxe
            lease = await self.seen.wait(mac, boot or "", BOOT_WAIT_SECONDS)
            plan = self._plan(query, m, discovery, outcome, views, rows, lease)
        profile = next((p for p in rows if p.name == plan.profile), None)
        if profile is not None and plan.image is not None:
            profile = _booting(profile, images.get(plan.image))
        token: str | None = None
        extra: list[str] = []
        if plan.token is not None and m is not None:
            ttl = timedelta(seconds=self.settings.boot_token_ttl)
            async with self._token_lock(m.id):
                token = await tokens.issue_bound(
                    m.id, plan.token.boot, plan.token.address, ttl, self.token_key
                )
            if plan.agent_args:
                extra = [f"bronze.machine={m.id}", f"bronze.token={token}"]
                if agent is not None:
                    extra += [f"bronze.server={agent.session}", f"bronze.enroll={agent.enroll}"]
        try:
            text = self._render(plan.action, mac, smbios_uuid, token, profile, extra)
        except UnsafeStoredProfile:
            if token is not None and m is not None:
                await tokens.wipe(m.id)
            raise
        now = time.time()
        for ev in plan.events:
            self.timeline.submit(Row(mac, ev.kind.value, now, "server", client_ip, ev.detail))
        if client_ip and profile is not None:
            initrds = [n for n in map(profiles.asset_name, profile.initrds) if n]
            self.steps.script_served(client_ip, mac, profiles.asset_name(profile.kernel), initrds)
        BOOT_DECISIONS.labels("script", str(plan.action)).inc()
        return Script(text, plan.action, plan.profile, m.name if m else None)

    def _plan(
        self,
        query: ScriptQuery,
        m: MachineInfo | None,
        discovery: bool,
        outcome: str | None,
        views: list[ProfileView],
        rows: list[BootProfile],
        lease: SeenLease | None,
    ) -> ScriptPlan:
        return plan_script(
            query,
            _view(m),
            discovery,
            outcome,
            views,
            _candidates(rows),
            discovery_profile=self.settings.boot_discovery_profile,
            enrollment_phases=ENROLLMENT_PHASES,
            lease=lease,
        )

    def _token_lock(self, machine_id: str) -> asyncio.Lock:
        # Two fetches of one boot at once must not each issue (the second would revoke the first).
        lock = self._token_locks.get(machine_id)
        if lock is None:
            if len(self._token_locks) > 10_000:
                self._token_locks = {k: v for k, v in self._token_locks.items() if v.locked()}
            lock = self._token_locks[machine_id] = asyncio.Lock()
        return lock

    def _render(
        self,
        action: BootAction,
        mac: str,
        smbios_uuid: str | None,
        token: str | None,
        profile: BootProfile | None,
        extra: list[str],
    ) -> str:
        try:
            ctx = RenderContext(mac=mac, server=self.base_url, uuid=smbios_uuid, token=token)
            if profile is None:
                return render(action, ctx)
            pp = profiles.to_pxe(profile.name, profile.kernel, profile.initrds, profile.args, extra)
            return render(action, ctx, pp)
        except UnsafeValue as exc:
            name = profile.name if profile is not None else "-"
            log.error(
                "unsafe boot profile refused at render profile=%s field=%s reason=%s mac=%s",
                name,
                exc.field,
                exc.reason,
                mac,
            )
            raise UnsafeStoredProfile(name, exc.field) from None


def _view(m: MachineInfo | None) -> MachineView | None:
    if m is None:
        return None
    return MachineView(m.id, m.name, m.phase, m.labels, m.ip, m.netboot, m.image)


def _booting(profile: BootProfile, image: Image | None) -> BootProfile:
    """The (detached) profile as it boots ``image``: the image's kernel, initrds and default
    args, then the profile's own args and ``bronze.image=DIGEST`` (what the agent reports it
    booted). An image that vanished leaves the profile unchanged."""
    if image is None:
        return profile
    kernel, initrds, args = image_boot(image, profile.args)
    return BootProfile(
        name=profile.name,
        selector=profile.selector,
        kernel=kernel,
        initrds=initrds,
        args=[*args, f"bronze.image={image.digest}"],
        agent=profile.agent,
        image=image.name,
    )
