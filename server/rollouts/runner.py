"""The rollout runner: one replica at a time (a database lease) walks every unfinished rollout.

Each pass, in one write transaction per rollout:

1. every active machine is observed (its agent's last report) and advanced one step
   (``server.rollouts.upgrade.advance``);
2. the rollout's next actions are decided (``server.rollouts.decide.next_actions``) and newly
   started machines get their first step;
3. commands for the agents (Upgrade, MarkGood, Reboot) are written to the agents' outbox
   (``agent_pending_commands``) *in the same transaction* as the step that needs them: a command
   exists exactly when its step is recorded, whatever crashes when. The session hub of whichever
   replica holds the agent's session delivers it (it polls that table), and the agent journals
   command ids, so a command is applied at most once.

Side effects that cannot join the transaction (webhook calls, BMC power cycles) run after the
commit. A hook that was being called when the server died is called again (hooks must be
idempotent, as drain and uncordon are); a power cycle is requested once per machine and upgrade.

After ``kill -9`` (or when another replica takes the lease) the next pass starts from the rows
alone: machines in flight are re-probed through their agents' reports before anything is done.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from agent.gen import agent_pb2 as pb
from server.inventory import machines as inventory
from server.inventory import singleton_lease
from server.inventory.db import Database
from server.inventory.models import AgentPendingCommand, AgentState, Image, Machine, utcnow
from server.inventory.secretbox import SecretBox
from server.rollouts import deprovisioning, provisioning, store
from server.rollouts.commands import upgrade_command
from server.rollouts.decide import CHAIN, Limits, MachineState, RolloutStatus, next_actions
from server.rollouts.hooks import call_hook
from server.rollouts.models import Rollout, RolloutMachine
from server.rollouts.observe import observe, progress, timeouts
from server.rollouts.planner import resolve_count
from server.rollouts.upgrade import (
    Action,
    Hooks,
    Serve,
    Timeouts,
    Transition,
    UpgradeStep,
    abort_in_flight,
    advance,
    hook_done,
    start,
)
from server.types import EventKind, Phase

log = logging.getLogger(__name__)

LEASE = "rollouts"
ACTOR = "rollouts"


@dataclass
class Effects:
    """What to do after the transaction commits."""

    hooks: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    """(rollout id, machine id, before|after, hook spec)"""
    cycles: list[str] = field(default_factory=list)
    """Machine ids to power-cycle through their BMC."""
    commands: int = 0
    """Agent commands written to the outbox (the local hub is told to deliver them now)."""
    power: list[tuple[str, str, str, float, str, int]] = field(default_factory=list)
    """Provisioning: (rollout id, machine id, up|cycle, delay s, step, attempt) power actions."""


@dataclass
class RunnerConfig:
    asset_base_url: str
    """Where agents download image files (``<base>/assets/NAME``)."""
    interval: float = 0.5
    coalesce: float = 0.02
    """After a wake (:meth:`RolloutRunner.wake`), how long to gather more reports first."""
    lease_ttl: float = 15.0
    write_timeout: timedelta = timedelta(seconds=300)
    recover_timeout: timedelta = timedelta(seconds=600)


class RolloutRunner:
    def __init__(
        self,
        db: Database,
        replica: str,
        config: RunnerConfig,
        secrets: SecretBox,
        power_cycle: Callable[[str], Awaitable[None]],
        clock: Callable[[], datetime] = utcnow,
        deliver: Callable[[], Awaitable[object]] | None = None,
        power_up: Callable[[str, str], Awaitable[str]] | None = None,
    ) -> None:
        self.db, self.replica, self.config = db, replica, config
        self.secrets, self.power_cycle, self.clock = secrets, power_cycle, clock
        self.deliver = deliver
        self.power_up = power_up
        """Provisioning: boot device PXE once, then power on (``up``) or ``cycle``; returns ""
        or why it failed."""
        """Asks this replica's session hub to send saved commands now (instead of at its next
        poll); agents held by other replicas get theirs at those replicas' polls."""
        self._hooks_in_flight: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._busy = False
        """The last pass found an unfinished rollout (only then do wakes run passes)."""
        self._reported: set[str] = set()
        """Machines whose agents reported since the last pass (a woken pass observes those)."""
        self._full_at = 0.0
        """Monotonic time of the next full pass (every machine in flight observed)."""
        self._renew_at = 0.0

    def wake(self, machine_id: str) -> None:
        """Something a pass reads changed (the machine's agent said hello, answered a command):
        run the next pass now instead of at the end of the interval, observing the machines
        that reported. Called on the event loop by this replica's session hub; agents held by
        other replicas are seen by the full pass at the interval."""
        if self._busy:
            self._reported.add(machine_id)
            self._wake.set()

    async def _idle(self, stop: asyncio.Event) -> None:
        """Until ``stop``, a wake, or the interval. After a wake, ``coalesce`` more seconds, so
        the reports of a batch's machines arriving together share one pass."""
        waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())}
        try:
            done, _ = await asyncio.wait(
                waits, timeout=self.config.interval, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for w in waits:
                w.cancel()
        if done and not stop.is_set() and self.config.coalesce > 0:
            try:
                await asyncio.wait_for(stop.wait(), self.config.coalesce)
            except TimeoutError:
                pass

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()  # reports arriving during this pass wake the next one
            try:
                if await self._hold_lease():
                    await self.tick()
            except Exception:
                self._renew_at = 0.0
                log.exception("rollout pass failed")
            await self._idle(stop)
        for t in list(self._tasks):
            t.cancel()
        await run_in_threadpool(singleton_lease.release, self.db, LEASE, self.replica)

    async def _hold_lease(self) -> bool:
        """Take or renew the lease; renewed at most every third of its TTL (a write each pass
        would cost as much as the pass when wakes make passes frequent)."""
        asked = time.monotonic()
        if asked < self._renew_at:
            return True
        held = await run_in_threadpool(
            singleton_lease.acquire, self.db, LEASE, self.replica, self.config.lease_ttl
        )
        self._renew_at = asked + self.config.lease_ttl / 3 if held else 0.0
        return held

    async def tick(self) -> None:
        """One pass over every unfinished rollout: full at the interval (and when rollouts
        appear), else over the machines that reported since the last pass."""
        ids = await run_in_threadpool(self._unfinished)
        full = not self._busy or time.monotonic() >= self._full_at
        only, self._reported = (None if full else self._reported), set()
        if full:
            self._full_at = time.monotonic() + self.config.interval
        self._busy = bool(ids)
        for rid in ids:
            effects = await run_in_threadpool(self._pass, rid, only)
            self._carry_out(effects)
            if effects.commands and self.deliver is not None:
                await self.deliver()

    def _timeouts(self, spec: dict[str, Any]) -> Timeouts:
        return timeouts(spec, self.config.write_timeout, self.config.recover_timeout)

    def _unfinished(self) -> list[str]:
        terminal = [s.value for s in RolloutStatus if s.terminal]
        with self.db.read() as s:
            return list(
                s.scalars(
                    select(Rollout.id)
                    .where(Rollout.status.not_in(terminal))
                    .order_by(Rollout.created_at)
                )
            )

    # --- one rollout, one transaction ------------------------------------------------------------

    def _pass(self, rollout_id: str, only: set[str] | None = None) -> Effects:
        """One transaction over the rollout. ``only``: the machines whose agents reported
        since the last pass; an upgrade then observes just those (the others' observations did
        not change), and a full pass (``None``) every interval catches deadlines."""
        effects = Effects()
        now = self.clock()
        with self.db.write() as s:
            r = store.get(s, rollout_id)
            if r.kind == provisioning.KIND:
                provisioning.ProvisionPass(
                    s, r, now, effects, self._command, self.config.asset_base_url, only
                ).run()
                return effects
            if r.kind == deprovisioning.DEPROVISION:
                deprovisioning.DeprovisionPass(s, r, now, effects, self._command).run()
                return effects
            states, rows, machines, agents = store.load_pass(s, r, only)
            spec = r.spec
            t = self._timeouts(spec)
            hooks = Hooks(pre="before" in spec["hooks"], post="after" in spec["hooks"])
            image = s.get(Image, r.image) if r.image else None
            rollback = (
                RolloutStatus(r.status) is RolloutStatus.ABORTING and spec["on_abort"] == "rollback"
            )
            for row in rows.values():
                if row.state != MachineState.ACTIVE:
                    continue
                m = machines[row.machine_id]
                if rollback:
                    tr = abort_in_flight(progress(row, now), now, t)
                    if tr is not None:
                        self._apply(s, r, row, m, tr, image, effects)
                else:
                    st = agents.get(row.machine_id)
                    self._advance(s, r, row, m, st, now, t, hooks, image, effects)
                states[row.machine_id] = MachineState(row.state)
            health = store.health(s, store.watched(r, states, in_flight=False))
            self._decide(
                s, r, states, rows, machines, agents, health, now, t, hooks, image, effects
            )
        return effects

    def _advance(
        self,
        s: Session,
        r: Rollout,
        row: RolloutMachine,
        m: Machine,
        st: AgentState | None,
        now: datetime,
        t: Timeouts,
        hooks: Hooks,
        image: Image | None,
        effects: Effects,
    ) -> None:
        """Advance the machine as far as what its agent reported allows: a transition that only
        waits (booting -> verifying) is followed at once by the next one the same report allows
        (verifying -> confirming), each recorded with its event, instead of one per pass."""
        target = image.digest if image else ""
        for _ in range(CHAIN):
            p = progress(row, now)
            tr = advance(p, observe(st, row, p, target), now, t, hooks, m.bmc_driver is not None)
            if tr is None:
                if p.step in (UpgradeStep.PRE_HOOK, UpgradeStep.POST_HOOK):
                    self._want_hook(r, row, p.step, effects)
                return
            self._apply(s, r, row, m, tr, image, effects)
            if tr.action is not Action.NONE or tr.state is not MachineState.ACTIVE:
                return
            if tr.step is p.step:
                return

    def _decide(
        self,
        s: Session,
        r: Rollout,
        states: dict[str, MachineState],
        rows: dict[str, RolloutMachine],
        machines: dict[str, Machine],
        agents: dict[str, AgentState],
        health: dict[str, bool],
        now: datetime,
        t: Timeouts,
        hooks: Hooks,
        image: Image | None,
        effects: Effects,
    ) -> None:
        spec = r.spec
        total = len(states)
        cap = spec.get("max_unavailable")
        limits = Limits(
            max_unavailable=resolve_count(cap, total, what="max_unavailable") if cap else total,
            failure_budget=int(spec.get("failure_budget", 0)),
        )
        acts = next_actions(
            RolloutStatus(r.status), store.batches_from(r.batches), states, limits, health
        )
        if acts.skip:  # pending machines of later batches: not loaded, one statement
            s.execute(
                update(RolloutMachine)
                .where(RolloutMachine.rollout_id == r.id, RolloutMachine.machine_id.in_(acts.skip))
                .values(state=MachineState.SKIPPED.value, claim=None, updated_at=now)
            )
        missing = [mid for mid in acts.start if mid not in rows]
        if missing:  # the batch that starts in the same pass as the previous one finished
            more_rows, more_machines, more_agents = store.load_rows(s, r, set(missing))
            rows.update(more_rows)
            machines.update(more_machines)
            agents.update(more_agents)
        for mid in acts.start:
            self._start(
                s, r, rows[mid], machines[mid], agents.get(mid), now, t, hooks, image, effects
            )
        if acts.status is not None:
            store.set_status(s, r, acts.status, acts.reason, ACTOR)
        elif acts.start or acts.skip:
            r.updated_at = now

    def _start(
        self,
        s: Session,
        r: Rollout,
        row: RolloutMachine,
        m: Machine,
        st: AgentState | None,
        now: datetime,
        t: Timeouts,
        hooks: Hooks,
        image: Image | None,
        effects: Effects,
    ) -> None:
        """A machine starts: what it runs now is recorded (to re-probe it after a restart)."""
        netboot = m.boot_from == "network"
        row.detail = {
            "from_boot_id": (st.boot_id if st else "") or "",
            "from_digest": (st.image_digest if st else "") or "",
            "target_digest": image.digest if image else "",
            "cycled": False,
            "mode": "netboot" if netboot else "disk",
        }
        row.state = MachineState.ACTIVE.value
        m.phase = Phase.UPGRADING.value
        inventory.record(
            s,
            actor=ACTOR,
            kind=EventKind.ROLLOUT_MACHINE_STARTED,
            message=f"upgrade of {m.name} to {r.image} started (rollout {r.id})",
            machine=m,
            data={"rollout": r.id, "image": r.image},
        )
        self._apply(s, r, row, m, start(hooks, now, t, netboot), image, effects)

    def _apply(
        self,
        s: Session,
        r: Rollout,
        row: RolloutMachine,
        m: Machine,
        tr: Transition,
        image: Image | None,
        effects: Effects,
    ) -> None:
        """Record the transition, write its command, queue its side effect."""
        now = self.clock()
        changed = tr.step.value != row.step or tr.state.value != row.state
        row.step, row.state, row.updated_at = tr.step.value, tr.state.value, now
        row.deadline = tr.deadline
        row.detail = {**row.detail, "cycled": tr.cycled or row.detail.get("cycled", False)}
        if tr.error:
            row.error = tr.error
        self._serve(m, r, tr.serve)
        if tr.action is Action.SEND_UPGRADE and image is not None:
            cmd_id = self._command(
                s, m.id, upgrade_command(r, image, self.config.asset_base_url), effects
            )
            row.detail = {**row.detail, "command_id": cmd_id}
        elif tr.action is Action.SEND_MARK_GOOD and image is not None:
            cmd = pb.Command(mark_good=pb.MarkGood(image_digest=image.digest))
            row.detail = {**row.detail, "command_id": self._command(s, m.id, cmd, effects)}
        elif tr.action is Action.SEND_REBOOT:
            cmd = pb.Command(reboot=pb.Reboot())
            row.detail = {**row.detail, "command_id": self._command(s, m.id, cmd, effects)}
        elif tr.action is Action.POWER_CYCLE:
            effects.cycles.append(m.id)
        elif tr.action in (Action.CALL_PRE_HOOK, Action.CALL_POST_HOOK):
            self._want_hook(r, row, tr.step, effects)
        if tr.state is MachineState.SUCCEEDED:
            row.claim = None
            m.phase, m.image, m.fault_reason = Phase.READY.value, r.image, None
            st = s.get(AgentState, m.id)
            if st is not None and image is not None:  # confirmed: its fallback is now this image
                st.last_good_digest = image.digest
        elif tr.state is MachineState.FAILED:
            row.claim = None
            if row.detail.get("mode") == "netboot":  # a failed trial is never served again
                m.trial_image = None
            m.phase, m.fault_reason = Phase.FAILED.value, f"upgrade to {r.image}: {tr.error}"
        if changed or tr.error:
            active = tr.state is MachineState.ACTIVE
            what = tr.step.value if active else tr.state.value
            inventory.record(
                s,
                actor=ACTOR,
                kind=EventKind(f"rollout.machine.{'step' if active else tr.state.value}"),
                message=f"{m.name}: {what}" + (f": {tr.error}" if tr.error else ""),
                machine=m,
                data={"rollout": r.id, "step": tr.step.value, "state": tr.state.value},
            )

    @staticmethod
    def _serve(m: Machine, r: Rollout, serve: Serve) -> None:
        """Diskless machines: what their boot script serves from now on (the boot plane reads
        ``trial_image`` first, then ``image``), written in the transition's transaction."""
        if serve is Serve.TRIAL:
            m.trial_image = r.image
        elif serve is Serve.CONFIRM:
            m.image, m.trial_image = r.image, None
        elif serve is Serve.LAST_GOOD:
            m.trial_image = None

    def _command(self, s: Session, machine_id: str, cmd: pb.Command, effects: Effects) -> str:
        cmd.id = str(uuid.uuid4())
        kind = cmd.WhichOneof("op") or "unknown"
        s.add(
            AgentPendingCommand(
                machine_id=machine_id,
                command_id=cmd.id,
                kind=kind,
                payload=cmd.SerializeToString(),
                created_at=utcnow(),
            )
        )
        effects.commands += 1
        return cmd.id

    # --- side effects after commit --------------------------------------------------------------

    def _want_hook(
        self, r: Rollout, row: RolloutMachine, step: UpgradeStep, effects: Effects
    ) -> None:
        key = (r.id, row.machine_id)
        if key in self._hooks_in_flight:
            return
        when = "before" if step is UpgradeStep.PRE_HOOK else "after"
        self._hooks_in_flight.add(key)
        payload = {
            "event": f"{when}-upgrade",
            "rollout": r.id,
            "machine": {"id": row.machine_id, "name": row.machine_name},
            "image": r.image,
        }
        effects.hooks.append((r.id, row.machine_id, r.spec["hooks"][when], payload))

    def _carry_out(self, effects: Effects) -> None:
        for rid, mid, hook, payload in effects.hooks:
            self._spawn(self._call_hook(rid, mid, hook, payload))
        for mid in effects.cycles:
            self._spawn(self.power_cycle(mid))
        for rid, mid, what, delay, step, attempt in effects.power:
            self._spawn(self._power(rid, mid, what, delay, step, attempt))

    async def _power(
        self, rid: str, mid: str, what: str, delay: float, step: str, attempt: int
    ) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        if self.power_up is None:
            error = "no power plane in this server"
        else:
            try:
                error = await self.power_up(mid, what)
            except Exception as exc:  # noqa: BLE001 - recorded as the step's power failure
                log.exception("power action failed machine=%s", mid)
                error = f"{type(exc).__name__}: {exc}"
        await run_in_threadpool(self._power_done, rid, mid, step, attempt, error)
        self.wake(mid)  # a failed power action is acted on at the next pass, not the full one

    def _power_done(self, rid: str, mid: str, step: str, attempt: int, error: str) -> None:
        with self.db.write() as s:
            provisioning.power_done(s, rid, mid, step, attempt, error, self.clock())

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call_hook(
        self, rid: str, mid: str, hook: dict[str, Any], payload: dict[str, Any]
    ) -> None:
        try:
            ok, error = await call_hook(hook, payload, self.secrets)
            effects = await run_in_threadpool(self._hook_done, rid, mid, ok, error)
        finally:
            self._hooks_in_flight.discard((rid, mid))
        self._carry_out(effects)
        if effects.commands and self.deliver is not None:  # the upgrade after a pre-hook
            await self.deliver()
        self.wake(mid)  # a finished machine may let the next one start

    def _hook_done(self, rid: str, mid: str, ok: bool, error: str) -> Effects:
        effects = Effects()
        with self.db.write() as s:
            r = store.get(s, rid)
            row = s.get(RolloutMachine, (rid, mid))
            if row is None or row.state != MachineState.ACTIVE:
                return effects
            p = progress(row, self.clock())
            if p.step not in (UpgradeStep.PRE_HOOK, UpgradeStep.POST_HOOK):
                return effects
            image = s.get(Image, r.image) if r.image else None
            m = s.get(Machine, mid)
            assert m is not None
            tr = hook_done(
                p,
                ok,
                error,
                self.clock(),
                timeouts(r.spec, self.config.write_timeout, self.config.recover_timeout),
            )
            self._apply(s, r, row, m, tr, image, effects)
        return effects
