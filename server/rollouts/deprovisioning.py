"""The runner's pass over a deprovisioning rollout (``kind = "deprovision"``): the database side
of ``server.rollouts.deprovision`` (the Wipe command written with its step; phase, image and
certificate revocation in the transaction that records success)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from agent.gen import agent_pb2 as pb
from server.agents import revocation
from server.inventory import machines as inventory
from server.inventory.models import Machine
from server.rollouts import deprovision, store
from server.rollouts.decide import Limits, MachineState, RolloutStatus, next_actions
from server.rollouts.effects import Effects, write_command
from server.rollouts.models import Rollout, RolloutMachine
from server.rollouts.provisioning import ACTOR, observe
from server.types import EventKind, Phase

DEPROVISION = "deprovision"
DEPROVISIONABLE = frozenset({Phase.READY, Phase.FAILED, Phase.MAINTENANCE, Phase.PROVISIONING})


class DeprovisionPass:
    """One pass over a deprovisioning rollout (``server.rollouts.deprovision``)."""

    def __init__(self, s: Session, r: Rollout, now: datetime, effects: Effects) -> None:
        self.s, self.r, self.now, self.effects = s, r, now, effects
        self.timeout = timedelta(seconds=int(r.spec.get("wipe_timeout_seconds", 3600)))

    def run(self) -> None:
        s, r = self.s, self.r
        states, rows, machines, agents = store.load_pass(s, r)
        for row in rows.values():
            if row.state != MachineState.ACTIVE:
                continue
            st = agents.get(row.machine_id)
            ob = observe(st, row)
            tr = deprovision.advance(
                inventory.as_utc(row.deadline) if row.deadline else None,
                ob.connected,
                ob.command_ok,
                ob.command_error,
                self.now,
            )
            if tr is not None:
                self._apply(row, machines[row.machine_id], tr)
                states[row.machine_id] = MachineState(row.state)
        limits = Limits(
            max_unavailable=int(r.spec.get("max_parallel", 50)), failure_budget=len(states)
        )
        acts = next_actions(
            RolloutStatus(r.status), store.batches_from(r.batches), states, limits, {}
        )
        for mid in acts.start:
            row, m = rows[mid], machines[mid]
            row.state = MachineState.ACTIVE.value
            inventory.record(
                s,
                actor=ACTOR,
                kind=EventKind.ROLLOUT_MACHINE_STARTED,
                message=f"deprovisioning of {m.name} started (wipe {r.spec['wipe']})",
                machine=m,
                data={"rollout": r.id, "kind": DEPROVISION, "wipe": r.spec["wipe"]},
            )
            self._apply(row, m, deprovision.start(r.spec["wipe"], self.now, self.timeout))
        if acts.status is not None:
            store.set_status(s, r, acts.status, acts.reason, ACTOR)
        elif acts.start:
            r.updated_at = self.now

    def _apply(self, row: RolloutMachine, m: Machine, tr: deprovision.Transition) -> None:
        changed = tr.step.value != row.step or tr.state.value != row.state
        row.step, row.state, row.updated_at = tr.step.value, tr.state.value, self.now
        row.deadline = tr.deadline
        if tr.error:
            row.error = tr.error
        if tr.action is deprovision.Action.SEND_WIPE:
            cmd = pb.Command(
                wipe=pb.Wipe(full=self.r.spec["wipe"] == "full", disk=self.r.spec.get("disk") or "")
            )
            cmd_id = write_command(self.s, m.id, cmd, self.effects)
            row.detail = {**row.detail, "command_id": cmd_id}
        if tr.state is MachineState.SUCCEEDED:
            row.claim = None
            m.phase, m.image, m.trial_image, m.fault_reason = (
                Phase.REGISTERED.value,
                None,
                None,
                None,
            )
            revocation.revoke(
                self.s,
                m.id,
                reason=revocation.RevokeReason.DEPROVISION,
                actor=ACTOR,
                always_record=True,
            )
            # live sessions with its certificate end at the hubs' next sweep (5 s)
        elif tr.state is MachineState.FAILED:
            row.claim = None
            m.phase, m.fault_reason = Phase.FAILED.value, f"deprovisioning: {tr.error}"
        if changed or tr.error:
            active = tr.state is MachineState.ACTIVE
            what = tr.step.value if active else tr.state.value
            inventory.record(
                self.s,
                actor=ACTOR,
                kind=EventKind(f"rollout.machine.{'step' if active else tr.state.value}"),
                message=f"{m.name}: deprovisioning {what}" + (f": {tr.error}" if tr.error else ""),
                machine=m,
                data={
                    "rollout": self.r.id,
                    "kind": DEPROVISION,
                    "step": tr.step.value,
                    "state": tr.state.value,
                },
            )
