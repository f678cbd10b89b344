"""The runner's pass over a provisioning rollout (``kind = "provision"``): the database side of
``server.rollouts.provision`` (observations in, transitions written, commands and power actions
queued), in the runner's transaction, with the same crash rules as upgrades.

Machines start ``max_parallel`` at a time (one batch, no failure budget: a machine that fails
does not stop the rack), their power-ups ``stagger_ms`` apart within a pass.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.gen import agent_pb2 as pb
from server.boot import images
from server.inventory import machines as inventory
from server.inventory.models import AgentState, BootTimelineEvent, Event, Image, Machine, Nic
from server.rollouts import store
from server.rollouts.decide import CHAIN, Limits, MachineState, RolloutStatus, goes_on, next_actions
from server.rollouts.effects import Effects, write_command
from server.rollouts.models import Rollout, RolloutMachine
from server.rollouts.observe import config_applied
from server.rollouts.provision import (
    Action,
    BootSeen,
    Observation,
    Progress,
    ProvisionStep,
    Request,
    Timeouts,
    Transition,
    advance,
    diagnose,
    start,
)
from server.types import EventKind, Phase

KIND = "provision"
ACTOR = "provisioning"


def request_of(spec: dict[str, Any]) -> Request:
    return Request(
        install=bool(spec.get("install")),
        expect=tuple(spec.get("expect") or ()),
        retries=int(spec.get("retries", 2)),
        retry_backoff=timedelta(seconds=float(spec.get("retry_backoff_seconds", 10))),
    )


def timeouts_of(spec: dict[str, Any]) -> Timeouts:
    t = spec.get("timeouts") or {}
    d = Timeouts()
    return Timeouts(
        netboot=timedelta(seconds=t.get("netboot_seconds", d.netboot.total_seconds())),
        configure=timedelta(seconds=t.get("configure_seconds", d.configure.total_seconds())),
        install=timedelta(seconds=t.get("install_seconds", d.install.total_seconds())),
        boot=timedelta(seconds=t.get("boot_seconds", d.boot.total_seconds())),
    )


def progress(row: RolloutMachine) -> Progress:
    d = row.detail
    return Progress(
        step=ProvisionStep(row.step) if row.step else ProvisionStep.NETBOOTING,
        from_boot_id=d.get("from_boot_id", ""),
        target_digest=d.get("target_digest", ""),
        deadline=inventory.as_utc(row.deadline) if row.deadline else None,
        attempts=int(d.get("attempts", 0)),
        cycled=bool(d.get("cycled", False)),
        power_error=d.get("power_error", ""),
    )


def observe(st: AgentState | None, row: RolloutMachine) -> Observation:
    if st is None:
        return Observation(False, "", "", "", False, {})
    ok: bool | None = None
    error = ""
    cmd = row.detail.get("command_id")
    if cmd and st.last_command_id == cmd:
        ok, error = bool(st.last_command_ok), st.last_command_error or ""
    return Observation(
        connected=bool(st.connected),
        boot_id=st.boot_id or "",
        image_digest=st.image_digest or "",
        slot=st.slot or "",
        config_applied=config_applied(st),
        inventory=st.inventory or {},
        command_ok=ok,
        command_error=error,
    )


def boot_seen(s: Session, m: Machine, since: datetime, now: datetime) -> BootSeen:
    """What the boot plane recorded for the machine's MACs since ``since``, and its agent's
    latest trouble report: the evidence ``diagnose`` reads."""
    macs = list(s.scalars(select(Nic.mac).where(Nic.machine_id == m.id)))
    rows = list(
        s.scalars(
            select(BootTimelineEvent)
            .where(BootTimelineEvent.mac.in_(macs), BootTimelineEvent.at >= since)
            .order_by(BootTimelineEvent.id.desc())
            .limit(200)
        )
    )
    kinds = {e.kind for e in rows}
    tftp = next((e for e in rows if e.kind in ("TFTP_START", "TFTP_ABORTED")), None)
    percent = None
    if tftp is not None and tftp.kind == "TFTP_ABORTED":
        sent, size = tftp.detail.get("bytes"), tftp.detail.get("size")
        if isinstance(sent, int) and isinstance(size, int) and size > 0:
            percent = int(100 * sent / size)
    script = next((e for e in rows if e.kind == "SCRIPT"), None)
    trouble = s.scalar(
        select(Event.message)
        .where(
            Event.machine_id == m.id,
            Event.kind.in_([EventKind.AGENT_TROUBLE.value, EventKind.AGENT_ENROLL_REFUSED.value]),
            Event.created_at >= since,
        )
        .order_by(Event.id.desc())
        .limit(1)
    )
    return BootSeen(
        mac=macs[0] if macs else "?",
        waited_s=int((now - since).total_seconds()),
        dhcp=bool(kinds & {"DISCOVER", "REQUEST"}),
        tftp_started=str(tftp.detail.get("file", "")) if tftp is not None else "",
        tftp_percent=percent,
        tftp_done="TFTP_COMPLETE" in kinds,
        script=script is not None,
        script_reason=str(script.detail.get("reason", "")) if script is not None else "",
        kernel="KERNEL" in kinds,
        agent_trouble=trouble or "",
        power_observed=m.power_observed,
        has_bmc=m.bmc_driver is not None,
    )


def install_command(image: Image, disk: str, asset_base_url: str) -> pb.Command:
    m = images.manifest_of(image)
    base = asset_base_url.rstrip("/")
    return pb.Command(
        install=pb.Install(
            manifest_json=m.canonical().decode(),
            signature=image.signature or "",
            urls=[f"{base}/assets/{f.file}" for f in m.files],
            disk=disk,
        )
    )


class ProvisionPass:
    """One pass over one provisioning rollout, inside the runner's write transaction."""

    def __init__(
        self,
        s: Session,
        r: Rollout,
        now: datetime,
        effects: Effects,
        asset_base_url: str,
        only: set[str] | None = None,
    ) -> None:
        self.s, self.r, self.now, self.effects = s, r, now, effects
        self.only = only
        """The machines whose agents reported since the last pass (None: every machine in
        flight; deadlines are only seen then)."""
        self.asset_base_url = asset_base_url
        self.req = request_of(r.spec)
        self.t = timeouts_of(r.spec)
        self.image = s.get(Image, r.image) if r.image else None
        self.target = self.image.digest if self.image else ""
        self.powered = 0
        """Power-ups queued in this pass (each ``stagger_ms`` after the previous)."""

    def run(self) -> None:
        s, r = self.s, self.r
        states, rows, machines, agents = store.load_pass(
            s, r, self.only, watch=False, inventory=True
        )
        for row in rows.values():
            if row.state != MachineState.ACTIVE:
                continue
            self._advance(row, machines[row.machine_id], agents.get(row.machine_id))
            states[row.machine_id] = MachineState(row.state)
        total = len(states)
        limits = Limits(max_unavailable=int(r.spec.get("max_parallel", 10)), failure_budget=total)
        acts = next_actions(
            RolloutStatus(r.status), store.batches_from(r.batches), states, limits, {}
        )
        if acts.skip:
            for row in store.machine_rows(s, r.id):
                if row.machine_id in acts.skip:
                    row.state, row.claim, row.updated_at = (
                        MachineState.SKIPPED.value,
                        None,
                        self.now,
                    )
        store.load_more(s, r, acts.start, rows, machines, agents, inventory=True)
        for mid in acts.start:
            self._start(rows[mid], machines[mid], agents.get(mid))
        if acts.status is not None:
            store.set_status(s, r, acts.status, acts.reason, ACTOR)
        elif acts.start or acts.skip:
            r.updated_at = self.now

    def _advance(self, row: RolloutMachine, m: Machine, st: AgentState | None) -> None:
        """As far as what its agent reported allows: a transition that only waits (netbooting
        -> configuring) is followed at once by the next one (configuring -> installing when the
        config is already applied), each recorded with its event."""
        for _ in range(CHAIN):
            p = progress(row)
            powered_at = row.detail.get("powered_at")
            since = inventory.as_utc(_dt(powered_at)) if powered_at else self.now
            tr = advance(
                p,
                observe(st, row),
                self.now,
                self.t,
                self.req,
                m.bmc_driver is not None,
                _diagnosis(self.s, m, since, self.now),
            )
            if tr is None:
                return
            self._apply(row, m, st, tr)
            if not goes_on(p.step, tr):
                return

    def _start(self, row: RolloutMachine, m: Machine, st: AgentState | None) -> None:
        netboot = m.boot_from == "network"
        row.detail = {
            "from_boot_id": (st.boot_id if st and st.connected else "") or "",
            "target_digest": self.target,
            "mode": "netboot" if netboot else "disk",
        }
        row.state = MachineState.ACTIVE.value
        m.phase, m.fault_reason = Phase.PROVISIONING.value, None
        if netboot:  # what its boot script serves while it is provisioned
            m.trial_image = self.r.image
        else:  # being (re)installed: the boot plane netboots it until the install is done
            m.image = None
        inventory.record(
            self.s,
            actor=ACTOR,
            kind=EventKind.ROLLOUT_MACHINE_STARTED,
            message=f"provisioning of {m.name} with {self.r.image} started (rollout {self.r.id})",
            machine=m,
            data={"rollout": self.r.id, "image": self.r.image, "kind": KIND},
        )
        self._apply(row, m, st, start(m.bmc_driver is not None, self.now, self.t))

    def _apply(
        self, row: RolloutMachine, m: Machine, st: AgentState | None, tr: Transition
    ) -> None:
        changed = tr.step.value != row.step or tr.state.value != row.state
        row.step, row.state, row.updated_at = tr.step.value, tr.state.value, self.now
        row.deadline = tr.deadline
        detail = {**row.detail, "attempts": tr.attempts or row.detail.get("attempts", 0)}
        if tr.cycled:
            detail["cycled"] = True
        if tr.error:
            row.error = tr.error
        if tr.action in (Action.POWER_UP, Action.ASK_OPERATOR, Action.POWER_CYCLE):
            detail["powered_at"] = self.now.isoformat()
            detail.pop("power_error", None)
            # Powered by us: the boot to leave is the one running now. Powered by an operator:
            # an agent already up counts (they may have powered it on before we asked).
            leave = st is not None and st.connected and tr.action is not Action.ASK_OPERATOR
            detail["from_boot_id"] = (st.boot_id or "") if leave and st is not None else ""
        if tr.new_boot:
            detail["from_boot_id"] = (st.boot_id if st else "") or ""
        if tr.action in (Action.POWER_UP, Action.POWER_CYCLE):
            what = "up" if tr.action is Action.POWER_UP else "cycle"
            delay = self.powered * float(self.r.spec.get("stagger_ms", 0)) / 1000
            self.powered += 1
            self.effects.power.append((self.r.id, m.id, what, delay, tr.step.value, tr.attempts))
        elif tr.action is Action.SEND_INSTALL and self.image is not None:
            disk = str((self.r.spec.get("install") or {}).get("disk", ""))
            cmd = install_command(self.image, disk, self.asset_base_url)
            detail["command_id"] = write_command(self.s, m.id, cmd, self.effects)
        row.detail = detail
        if tr.state is MachineState.SUCCEEDED:
            row.claim = None
            m.phase, m.image, m.trial_image, m.fault_reason = (
                Phase.READY.value,
                self.r.image,
                None,
                None,
            )
        elif tr.state is MachineState.FAILED:
            row.claim = None
            m.phase = Phase.FAILED.value
            m.fault_reason = f"provisioning step {tr.step.value}: {tr.error}"
            m.trial_image = None
        elif tr.step is ProvisionStep.BOOTING_DISK and changed:
            m.image = self.r.image  # installed: the boot plane now answers it with its disk
        if changed or tr.error or tr.note:
            active = tr.state is MachineState.ACTIVE
            what = tr.step.value if active else tr.state.value
            text = tr.error or tr.note
            inventory.record(
                self.s,
                actor=ACTOR,
                kind=EventKind(f"rollout.machine.{'step' if active else tr.state.value}"),
                message=f"{m.name}: {what}" + (f": {text}" if text else ""),
                machine=m,
                data={
                    "rollout": self.r.id,
                    "kind": KIND,
                    "step": tr.step.value,
                    "state": tr.state.value,
                    "action": tr.action.value,
                },
            )


def _diagnosis(s: Session, m: Machine, since: datetime, now: datetime) -> Callable[[], str]:
    def explain() -> str:
        return diagnose(boot_seen(s, m, since, now))

    return explain


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


def power_done(
    s: Session, rid: str, mid: str, step: str, attempts: int, error: str, now: datetime
) -> None:
    """A power action ended: a failure is recorded for the step machine (only if the machine is
    still where it was when the action was queued); success needs nothing (the agent's boot
    is the proof)."""
    row = s.get(RolloutMachine, (rid, mid))
    if row is None or row.state != MachineState.ACTIVE or row.step != step:
        return
    if int(row.detail.get("attempts", 0)) != attempts:
        return
    m = s.get(Machine, mid)
    if error:
        row.detail = {**row.detail, "power_error": error}
        row.updated_at = now
    if m is not None:
        inventory.record(
            s,
            actor=ACTOR,
            kind=EventKind.ROLLOUT_MACHINE_STEP,
            message=f"{m.name}: {step}: "
            + (f"power action failed: {error}" if error else "powered on for network boot"),
            machine=m,
            data={"rollout": rid, "kind": KIND, "step": step, "power": "failed" if error else "ok"},
        )
