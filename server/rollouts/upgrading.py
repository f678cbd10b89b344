"""The runner's pass over an upgrade rollout (``kind = "upgrade"``): the database side of
``server.rollouts.upgrade`` (observations in, transitions written with their events, commands
written to the agents' outbox in the same transaction), and the next batch started when the
plan allows (``server.rollouts.decide``).

A machine advances as far as its agent's last report allows in one pass: a transition that
only waits (``booting -> verifying``) is followed at once by the next one the same observation
allows (``verifying -> confirming``), up to ``CHAIN`` transitions, each recorded first.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from agent.gen import agent_pb2 as pb
from server.inventory import machines as inventory
from server.inventory.models import AgentState, Image, Machine
from server.rollouts import store
from server.rollouts.commands import upgrade_command
from server.rollouts.decide import CHAIN, Limits, MachineState, RolloutStatus, goes_on, next_actions
from server.rollouts.effects import Effects, write_command
from server.rollouts.models import Rollout, RolloutMachine
from server.rollouts.observe import observe, progress, timeouts
from server.rollouts.planner import resolve_count
from server.rollouts.upgrade import (
    Action,
    Hooks,
    Serve,
    Transition,
    UpgradeStep,
    abort_in_flight,
    advance,
    hook_done,
    start,
)
from server.types import EventKind, Phase

ACTOR = "rollouts"


class UpgradePass:
    """One pass over one upgrade rollout, inside the runner's write transaction."""

    def __init__(
        self,
        s: Session,
        r: Rollout,
        now: datetime,
        effects: Effects,
        asset_base_url: str,
        write_timeout: timedelta,
        recover_timeout: timedelta,
    ) -> None:
        self.s, self.r, self.now, self.effects = s, r, now, effects
        self.asset_base_url = asset_base_url
        self.t = timeouts(r.spec, write_timeout, recover_timeout)
        self.hooks = Hooks(pre="before" in r.spec["hooks"], post="after" in r.spec["hooks"])
        self.image = s.get(Image, r.image) if r.image else None

    def run(self, only: set[str] | None = None) -> None:
        """``only``: the machines whose agents reported since the last pass (the others'
        observations did not change); None: every machine in flight (deadlines)."""
        s, r = self.s, self.r
        states, rows, machines, agents = store.load_pass(s, r, only)
        rollback = (
            RolloutStatus(r.status) is RolloutStatus.ABORTING and r.spec["on_abort"] == "rollback"
        )
        for row in rows.values():
            if row.state != MachineState.ACTIVE:
                continue
            m = machines[row.machine_id]
            if rollback:
                tr = abort_in_flight(progress(row, self.now), self.now, self.t)
                if tr is not None:
                    self.apply(row, m, tr)
            else:
                self._advance(row, m, agents.get(row.machine_id))
            states[row.machine_id] = MachineState(row.state)
        health = store.health(s, store.watched(r, states, in_flight=False))
        self._decide(states, rows, machines, agents, health)

    def hook_answered(self, row: RolloutMachine, m: Machine, ok: bool, error: str) -> None:
        """The pre- or post-hook of a machine answered (it is still on that step)."""
        self.apply(row, m, hook_done(progress(row, self.now), ok, error, self.now, self.t))

    def _advance(self, row: RolloutMachine, m: Machine, st: AgentState | None) -> None:
        target = self.image.digest if self.image else ""
        has_bmc = m.bmc_driver is not None
        for _ in range(CHAIN):
            p = progress(row, self.now)
            tr = advance(p, observe(st, row, p, target), self.now, self.t, self.hooks, has_bmc)
            if tr is None:
                if p.step in (UpgradeStep.PRE_HOOK, UpgradeStep.POST_HOOK):
                    self._want_hook(row, p.step)  # again: a server that died while calling it
                return
            self.apply(row, m, tr)
            if not goes_on(p.step, tr):
                return

    def _decide(
        self,
        states: dict[str, MachineState],
        rows: dict[str, RolloutMachine],
        machines: dict[str, Machine],
        agents: dict[str, AgentState],
        health: dict[str, bool],
    ) -> None:
        s, r = self.s, self.r
        total = len(states)
        cap = r.spec.get("max_unavailable")
        limits = Limits(
            max_unavailable=resolve_count(cap, total, what="max_unavailable") if cap else total,
            failure_budget=int(r.spec.get("failure_budget", 0)),
        )
        acts = next_actions(
            RolloutStatus(r.status), store.batches_from(r.batches), states, limits, health
        )
        if acts.skip:  # pending machines of later batches: not loaded, one statement
            s.execute(
                update(RolloutMachine)
                .where(RolloutMachine.rollout_id == r.id, RolloutMachine.machine_id.in_(acts.skip))
                .values(state=MachineState.SKIPPED.value, claim=None, updated_at=self.now)
            )
        store.load_more(s, r, acts.start, rows, machines, agents)
        for mid in acts.start:
            self._start(rows[mid], machines[mid], agents.get(mid))
        if acts.status is not None:
            store.set_status(s, r, acts.status, acts.reason, ACTOR)
        elif acts.start or acts.skip:
            r.updated_at = self.now

    def _start(self, row: RolloutMachine, m: Machine, st: AgentState | None) -> None:
        """A machine starts: what it runs now is recorded (to re-probe it after a restart)."""
        netboot = m.boot_from == "network"
        row.detail = {
            "from_boot_id": (st.boot_id if st else "") or "",
            "from_digest": (st.image_digest if st else "") or "",
            "target_digest": self.image.digest if self.image else "",
            "cycled": False,
            "mode": "netboot" if netboot else "disk",
        }
        row.state = MachineState.ACTIVE.value
        m.phase = Phase.UPGRADING.value
        inventory.record(
            self.s,
            actor=ACTOR,
            kind=EventKind.ROLLOUT_MACHINE_STARTED,
            message=f"upgrade of {m.name} to {self.r.image} started (rollout {self.r.id})",
            machine=m,
            data={"rollout": self.r.id, "image": self.r.image},
        )
        self.apply(row, m, start(self.hooks, self.now, self.t, netboot))

    def apply(self, row: RolloutMachine, m: Machine, tr: Transition) -> None:
        """Record the transition, write its command, queue its side effect."""
        s, r, image, effects = self.s, self.r, self.image, self.effects
        changed = tr.step.value != row.step or tr.state.value != row.state
        row.step, row.state, row.updated_at = tr.step.value, tr.state.value, self.now
        row.deadline = tr.deadline
        row.detail = {**row.detail, "cycled": tr.cycled or row.detail.get("cycled", False)}
        if tr.error:
            row.error = tr.error
        _serve(m, r, tr.serve)
        cmd: pb.Command | None = None
        if tr.action is Action.SEND_UPGRADE and image is not None:
            cmd = upgrade_command(r, image, self.asset_base_url)
        elif tr.action is Action.SEND_MARK_GOOD and image is not None:
            cmd = pb.Command(mark_good=pb.MarkGood(image_digest=image.digest))
        elif tr.action is Action.SEND_REBOOT:
            cmd = pb.Command(reboot=pb.Reboot())
        elif tr.action is Action.POWER_CYCLE:
            effects.cycles.append(m.id)
        elif tr.action in (Action.CALL_PRE_HOOK, Action.CALL_POST_HOOK):
            self._want_hook(row, tr.step)
        if cmd is not None:
            row.detail = {**row.detail, "command_id": write_command(s, m.id, cmd, effects)}
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

    def _want_hook(self, row: RolloutMachine, step: UpgradeStep) -> None:
        when = "before" if step is UpgradeStep.PRE_HOOK else "after"
        payload = {
            "event": f"{when}-upgrade",
            "rollout": self.r.id,
            "machine": {"id": row.machine_id, "name": row.machine_name},
            "image": self.r.image,
        }
        self.effects.hooks.append((self.r.id, row.machine_id, self.r.spec["hooks"][when], payload))


def _serve(m: Machine, r: Rollout, serve: Serve) -> None:
    """Diskless machines: what their boot script serves from now on (the boot plane reads
    ``trial_image`` first, then ``image``), written in the transition's transaction."""
    if serve is Serve.TRIAL:
        m.trial_image = r.image
    elif serve is Serve.CONFIRM:
        m.image, m.trial_image = r.image, None
    elif serve is Serve.LAST_GOOD:
        m.trial_image = None
