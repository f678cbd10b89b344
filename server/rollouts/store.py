"""Rollouts in the database: create (or plan without writing), read, pause/resume/abort.

A rollout is written whole at creation: its spec, its batches, and one ``rollout_machines`` row
per machine holding a *claim* on the machine (a unique column set to the machine id while the
rollout is unfinished). Two rollouts over one machine are impossible on every replica: the
second insert violates the unique index and answers 409 naming the rollout that holds it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer, lazyload

from server.errors import Conflict, Invalid, NotFound
from server.inventory import machines as inventory
from server.inventory.models import AgentState, Machine, MachineLabel, utcnow
from server.inventory.selectors import Requirement
from server.rollouts.decide import MachineState, RolloutStatus
from server.rollouts.models import Rollout, RolloutMachine
from server.rollouts.planner import (
    Batch,
    BatchKind,
    BatchPolicy,
    Candidate,
    PlanError,
    plan_batches,
)
from server.types import EventKind, Phase


def candidates(
    s: Session, reqs: Sequence[Requirement], ids: Sequence[str] | None = None
) -> list[tuple[Machine, Candidate]]:
    """The machines the selector matches (or exactly ``ids``), with their labels."""
    where = Machine.id.in_(ids) if ids is not None else inventory.selector_clause(reqs)
    rows = list(s.scalars(select(Machine).where(where)))
    labels: dict[str, dict[str, str]] = {m.id: {} for m in rows}
    if rows:
        for lab in s.scalars(select(MachineLabel).where(MachineLabel.machine_id.in_(labels))):
            labels[lab.machine_id][lab.key] = lab.value
    return [(m, Candidate(m.id, m.name, labels[m.id])) for m in rows]


UPGRADABLE = frozenset({Phase.READY})
PROVISIONABLE = frozenset({Phase.REGISTERED, Phase.PROVISIONING, Phase.FAILED})
"""Provisioning takes machines not in service: a ``ready`` one is deprovisioned first."""


def plan(
    s: Session,
    reqs: Sequence[Requirement],
    policy: BatchPolicy,
    phases: frozenset[Phase] = UPGRADABLE,
    verb: str = "upgraded",
    ids: Sequence[str] | None = None,
) -> tuple[list[Batch], dict[str, Machine]]:
    """The batches for the selection; 409 when a machine is held by an unfinished rollout (checked
    first: that rollout is why its phase moved), else 422 (empty selection, bad policy, a machine
    in another phase than ``phases``)."""
    found = candidates(s, reqs, ids)
    if not found:
        raise Invalid(message="selector: no machine matches", details={"field": "selector"})
    taken = overlap(s, [m.id for m, _ in found])
    if taken is not None:
        raise taken
    wrong = sorted(m.name for m, _ in found if Phase(m.phase) not in phases)
    if wrong:
        allowed = ", ".join(sorted(p.value for p in phases))
        raise Invalid(
            message=f"only {allowed} machines can be {verb}; not: {', '.join(wrong[:20])}",
            details={"field": "selector", "wrong_phase": wrong},
        )
    try:
        batches = plan_batches([c for _, c in found], policy)
    except PlanError as exc:
        raise Invalid(message=str(exc), details={"field": "plan"}) from None
    return batches, {m.id: m for m, _ in found}


def batches_doc(batches: Sequence[Batch]) -> list[dict[str, Any]]:
    return [{**asdict(b), "kind": b.kind.value, "machines": list(b.machines)} for b in batches]


def batches_from(doc: Sequence[dict[str, Any]]) -> list[Batch]:
    return [Batch(d["index"], BatchKind(d["kind"]), d["domain"], tuple(d["machines"])) for d in doc]


def create(
    s: Session,
    *,
    kind: str,
    image: str | None,
    selector: str,
    spec: dict[str, Any],
    batches: Sequence[Batch],
    machines: dict[str, Machine],
    actor: str,
) -> Rollout:
    """Writes the rollout and claims its machines. 409 when a machine is claimed already; a
    concurrent claim that wins the race surfaces as IntegrityError at flush (the caller maps it
    through :func:`overlap` in a fresh session: this transaction is void)."""
    taken = overlap(s, list(machines))
    if taken is not None:
        raise taken
    now = utcnow()
    r = Rollout(
        id=str(uuid.uuid4()),
        kind=kind,
        status=RolloutStatus.RUNNING.value,
        image=image,
        selector=selector,
        spec=spec,
        batches=batches_doc(batches),
        reason="",
        created_at=now,
        updated_at=now,
        created_by=actor,
    )
    s.add(r)
    for b in batches:
        for mid in b.machines:
            s.add(
                RolloutMachine(
                    rollout_id=r.id,
                    machine_id=mid,
                    machine_name=machines[mid].name,
                    batch=b.index,
                    state=MachineState.PENDING.value,
                    step="",
                    detail={},
                    updated_at=now,
                    claim=mid,
                )
            )
    s.flush()
    inventory.record(
        s,
        actor=actor,
        kind=EventKind(f"rollout.{kind}.created"),
        message=f"{kind} rollout {r.id} created: {sum(len(b.machines) for b in batches)} "
        f"machine(s) in {len(batches)} batch(es)" + (f" to image {image}" if image else ""),
        data={"rollout": r.id, "image": image, "selector": selector},
    )
    return r


def overlap(s: Session, machine_ids: Sequence[str]) -> Conflict | None:
    """409 naming the unfinished rollouts that hold any of ``machine_ids``, or None."""
    held = s.execute(
        select(RolloutMachine.rollout_id, RolloutMachine.machine_name).where(
            RolloutMachine.claim.in_(machine_ids)
        )
    ).all()
    by_rollout: dict[str, list[str]] = {}
    for rid, name in held:
        by_rollout.setdefault(rid, []).append(name)
    if not by_rollout:
        return None
    who = "; ".join(f"{rid}: {', '.join(sorted(n)[:10])}" for rid, n in by_rollout.items())
    return Conflict(
        message=f"machines are already in a running rollout ({who})",
        details={"rollouts": by_rollout},
    )


def get(s: Session, rollout_id: str) -> Rollout:
    r = s.get(Rollout, rollout_id)
    if r is None:
        raise NotFound(kind="rollout", key=rollout_id)
    return r


def machine_rows(s: Session, rollout_id: str) -> list[RolloutMachine]:
    return list(
        s.scalars(
            select(RolloutMachine)
            .where(RolloutMachine.rollout_id == rollout_id)
            .order_by(RolloutMachine.batch, RolloutMachine.machine_name)
        )
    )


def view(s: Session, r: Rollout, waiting_for: str = "") -> dict[str, Any]:
    # Only the shown columns, as plain rows: ORM objects (and their ``detail`` JSON) for every
    # machine made a status poll of a 1,000-machine rollout cost ~25 ms of the server's CPU.
    rows = {
        m.machine_id: m
        for m in s.execute(
            select(
                RolloutMachine.machine_id,
                RolloutMachine.machine_name,
                RolloutMachine.state,
                RolloutMachine.step,
                RolloutMachine.error,
                RolloutMachine.updated_at,
            ).where(RolloutMachine.rollout_id == r.id)
        )
    }
    counts = {st.value: 0 for st in MachineState}
    for m in rows.values():
        counts[m.state] += 1
    return {
        "id": r.id,
        "kind": r.kind,
        "status": r.status,
        "reason": r.reason,
        "waiting_for": waiting_for,
        "image": r.image,
        "selector": r.selector,
        "spec": r.spec,
        "counts": counts,
        "batches": [
            {
                **{k: b[k] for k in ("index", "kind", "domain")},
                "machines": [_machine_view(rows[mid]) for mid in b["machines"] if mid in rows],
            }
            for b in r.batches
        ],
        "created_at": inventory.iso(r.created_at),
        "updated_at": inventory.iso(r.updated_at),
        "created_by": r.created_by,
    }


def _machine_view(m: Any) -> dict[str, Any]:
    return {
        "id": m.machine_id,
        "name": m.machine_name,
        "state": m.state,
        "step": m.step,
        "error": m.error,
        "updated_at": inventory.iso(m.updated_at),
    }


_CONTROL: dict[str, tuple[set[RolloutStatus], RolloutStatus]] = {
    "pause": ({RolloutStatus.RUNNING}, RolloutStatus.PAUSED),
    "resume": ({RolloutStatus.PAUSED}, RolloutStatus.RUNNING),
    "abort": ({RolloutStatus.RUNNING, RolloutStatus.PAUSED}, RolloutStatus.ABORTING),
}


def control(s: Session, r: Rollout, verb: str, actor: str) -> Rollout:
    """pause / resume / abort: 409 naming the status when the verb does not apply."""
    allowed, target = _CONTROL[verb]
    current = RolloutStatus(r.status)
    if current is target:
        return r  # idempotent: asking twice is not an error
    if current not in allowed:
        raise Conflict(
            message=f"cannot {verb} a rollout that is {current.value}",
            details={"status": current.value},
        )
    set_status(s, r, target, f"{verb} by {actor}", actor)
    return r


def set_status(s: Session, r: Rollout, status: RolloutStatus, reason: str, actor: str) -> None:
    r.status, r.reason, r.updated_at = status.value, reason, utcnow()
    if status.terminal:
        for m in machine_rows(s, r.id):
            m.claim = None
    inventory.record(
        s,
        actor=actor,
        kind=EventKind(f"rollout.{status.value}"),
        message=f"rollout {r.id} {status.value}" + (f": {reason}" if reason else ""),
        data={"rollout": r.id, "status": status.value, "reason": reason},
    )


def list_rollouts(
    s: Session, limit: int, before: datetime | None, kind: str = "upgrade"
) -> list[Rollout]:
    stmt = (
        select(Rollout)
        .where(Rollout.kind == kind)
        .order_by(Rollout.created_at.desc(), Rollout.id.desc())
        .limit(limit)
    )
    if before is not None:
        stmt = stmt.where(Rollout.created_at < before)
    return list(s.scalars(stmt))


def load_pass(
    s: Session,
    r: Rollout,
    only: set[str] | None = None,
    watch: bool = True,
    inventory: bool = False,
) -> tuple[
    dict[str, MachineState],
    dict[str, RolloutMachine],
    dict[str, Machine],
    dict[str, AgentState],
]:
    """Every machine's state (one narrow query), and full rows only for the machines this
    pass can touch: those in flight, the current batch, and the control plane. A pass over
    a 1,000-machine rollout reads a batch's worth of objects, not the fleet's. With ``only``
    (the machines whose agents reported since the last pass), just those of them in flight;
    without ``watch``, only the machines in flight (a pass that loads what it starts);
    ``inventory``: with the agents' inventories (a pass that checks hardware)."""
    states = machine_states(s, r)
    relevant = {m for m, st in states.items() if st is MachineState.ACTIVE}
    if only is not None:
        relevant &= only
    elif watch:
        relevant |= watched(r, states)
    return (states, *load_rows(s, r, relevant, inventory))


def machine_states(s: Session, r: Rollout) -> dict[str, MachineState]:
    """Every machine's state, summarised per batch in SQL: a batch whose rows are all in one
    state (every batch but the current one, as a rule) is filled from the rollout's batch list,
    and only the other batches' rows are read. Reading all 1,000 rows of a large rollout was a
    third of a pass, and passes run several times a second. One batch (provisioning): its
    rows, no summary."""
    size = {b["index"]: len(b["machines"]) for b in r.batches}
    one_state = _uniform_batches(s, r, size) if len(size) > 1 else {}
    states: dict[str, MachineState] = {}
    mixed = []
    for b in r.batches:
        if b["index"] in one_state:
            states.update(dict.fromkeys(b["machines"], MachineState(one_state[b["index"]])))
        else:
            mixed.append(b["index"])
    if mixed:
        for mid, st in s.execute(
            select(RolloutMachine.machine_id, RolloutMachine.state).where(
                RolloutMachine.rollout_id == r.id, RolloutMachine.batch.in_(mixed)
            )
        ):
            states[mid] = MachineState(st)
    return states


def _uniform_batches(s: Session, r: Rollout, size: dict[int, int]) -> dict[int, str]:
    """The batches whose rows are all in one state (as many as the batch lists): that state."""
    rows = s.execute(
        select(
            RolloutMachine.batch,
            func.min(RolloutMachine.state),
            func.max(RolloutMachine.state),
            func.count(),
        )
        .where(RolloutMachine.rollout_id == r.id)
        .group_by(RolloutMachine.batch)
    )
    return {batch: lo for batch, lo, hi, n in rows if lo == hi and n == size.get(batch)}


def watched(r: Rollout, states: dict[str, MachineState], in_flight: bool = True) -> set[str]:
    """The machines whose health gates what starts next: the current batch and the control
    plane; without ``in_flight``, less the current batch's machines in flight that are not
    control plane (their health gates nothing: they are counted as away already)."""
    batches = batches_from(r.batches)
    current = next((b for b in batches if not all(states[m].finished for m in b.machines)), None)
    out = set(current.machines) if current is not None else set()
    if not in_flight:
        out = {m for m in out if states[m] is not MachineState.ACTIVE}
    out.update(m for b in batches if b.kind is BatchKind.CONTROL_PLANE for m in b.machines)
    return out


def health(s: Session, machine_ids: set[str]) -> dict[str, bool]:
    """Which of ``machine_ids`` are healthy now (their agent connected, its config applied),
    from three columns of their agent states: no ORM objects."""
    out = dict.fromkeys(machine_ids, False)
    if machine_ids:
        for mid, connected, desired, applied in s.execute(
            select(
                AgentState.machine_id,
                AgentState.connected,
                AgentState.desired_config_version,
                AgentState.applied_config_version,
            ).where(AgentState.machine_id.in_(machine_ids))
        ):
            out[mid] = bool(connected) and (desired is None or applied == desired)
    return out


def load_more(
    s: Session,
    r: Rollout,
    ids: Sequence[str],
    rows: dict[str, RolloutMachine],
    machines: dict[str, Machine],
    agents: dict[str, AgentState],
    inventory: bool = False,
) -> None:
    """Add the rows of ``ids`` not loaded yet to a pass's dictionaries (the batch that starts in
    the same pass as the previous one finished)."""
    missing = {mid for mid in ids if mid not in rows}
    if missing:
        more_rows, more_machines, more_agents = load_rows(s, r, missing, inventory)
        rows.update(more_rows)
        machines.update(more_machines)
        agents.update(more_agents)


def load_rows(
    s: Session, r: Rollout, relevant: set[str], inventory: bool = False
) -> tuple[dict[str, RolloutMachine], dict[str, Machine], dict[str, AgentState]]:
    rows = {
        m.machine_id: m
        for m in s.scalars(
            select(RolloutMachine).where(
                RolloutMachine.rollout_id == r.id, RolloutMachine.machine_id.in_(relevant)
            )
        )
    }
    # The JSON documents (hardware, configs, and the inventory unless asked for) are not
    # loaded: decoding them for every machine of a batch, every pass, was a fifth of a pass.
    machines = {
        m.id: m
        for m in s.scalars(
            select(Machine)
            .where(Machine.id.in_(relevant))
            .options(
                lazyload(Machine.nics),
                lazyload(Machine.label_rows),
                defer(Machine.hardware),
                defer(Machine.power_request),
            )
        )
    }
    agents = {
        a.machine_id: a
        for a in s.scalars(
            select(AgentState)
            .where(AgentState.machine_id.in_(relevant))
            .options(
                *(() if inventory else (defer(AgentState.inventory),)),
                defer(AgentState.pushed_config),
                defer(AgentState.applied_config),
                defer(AgentState.identity_conflict),
            )
        )
    }
    return rows, machines, agents
