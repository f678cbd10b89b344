"""Batch planning: which machines go together, and in which order (pure).

A rollout changes machines a few at a time so that a bad change costs one batch, not the fleet
(Kubernetes Deployments' ``maxUnavailable``, Cluster API's ``MachineDeployment`` rollouts, Omni's
machine-set updates). The plan is fixed when the rollout is created and persisted with it, so a
restarted server resumes the same batches in the same order.

Order:

1. **Canaries**, each alone: a named list, or the first N machines (by name) that are not
   control plane. A bad image should fail on a machine nobody depends on.
2. **Control plane**, one machine per batch (etcd keeps quorum only while at most one member is
   away; the runner also waits until every other control-plane machine is healthy).
3. **Everything else**, grouped by failure domain (the value of a label such as ``rack``) and
   cut into batches of ``min(batch_size, max_unavailable)``. A batch never spans two domains, and
   batches run one after another, so two domains are never disturbed at once.

Within each group machines are ordered by name, so the plan is deterministic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from server.inventory.selectors import matches, parse

NO_DOMAIN = ""
"""The failure domain of machines without the domain label: they form one domain of their own."""


class PlanError(ValueError):
    """The policy cannot be applied to this selection (bad size, unknown canary, ...)."""


class BatchKind(StrEnum):
    """Why a batch exists."""

    CANARY = "canary"
    """One machine changed alone before any other, to catch a bad change cheaply."""
    CONTROL_PLANE = "control-plane"
    """One control-plane machine, changed only while all the others are healthy."""
    REGULAR = "regular"
    """Machines of one failure domain, changed together."""


@dataclass(frozen=True)
class Candidate:
    """A machine of the selection, as the planner sees it."""

    id: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchPolicy:
    batch_size: int | str = 1
    """Machines per batch: a number, or a percentage of the selection such as ``"10%"``."""
    max_unavailable: int | str | None = None
    """Most machines away at once (number or percentage); caps the batch size. None: no cap."""
    failure_domain: str | None = None
    """A label key (``rack``); batches never mix two of its values."""
    canary: int | tuple[str, ...] = 0
    """How many canaries (chosen by name), or which machines, by name."""
    control_plane: str = "role=control-plane"
    """Selector of the control-plane machines (one at a time). Empty: none."""


@dataclass(frozen=True)
class Batch:
    index: int
    kind: BatchKind
    domain: str
    machines: tuple[str, ...]
    """Machine ids, in the order they start."""


_PERCENT = re.compile(r"([1-9][0-9]?|100)%")


def resolve_count(spec: int | str, total: int, *, what: str) -> int:
    """``10`` -> 10; ``"10%"`` of 95 -> 10 (rounded up, at least 1)."""
    if isinstance(spec, bool):
        raise PlanError(f"{what} must be a number or a percentage, not {spec!r}")
    if isinstance(spec, int):
        if spec < 1:
            raise PlanError(f"{what} must be at least 1, got {spec}")
        return spec
    m = _PERCENT.fullmatch(spec) if isinstance(spec, str) else None
    if not m:
        raise PlanError(f"{what} must be a number or a percentage like '10%', got {spec!r}")
    return max(1, math.ceil(total * int(m.group(1)) / 100))


def plan_batches(machines: Sequence[Candidate], policy: BatchPolicy) -> list[Batch]:
    """The ordered batches for ``machines`` under ``policy`` (see the module docstring)."""
    if not machines:
        return []
    by_name = sorted(machines, key=lambda m: m.name)
    size = resolve_count(policy.batch_size, len(by_name), what="batch_size")
    if policy.max_unavailable is not None:
        cap = resolve_count(policy.max_unavailable, len(by_name), what="max_unavailable")
        size = min(size, cap)
    control = _control_plane(by_name, policy.control_plane)
    canaries = _canaries(by_name, control, policy.canary)
    taken = {m.id for m in canaries} | {m.id for m in control}

    def domain(m: Candidate) -> str:
        key = policy.failure_domain
        return m.labels.get(key, NO_DOMAIN) if key else NO_DOMAIN

    batches: list[Batch] = []

    def add(kind: BatchKind, dom: str, group: Sequence[Candidate]) -> None:
        batches.append(Batch(len(batches), kind, dom, tuple(m.id for m in group)))

    for m in canaries:
        add(BatchKind.CANARY, domain(m), [m])
    for m in control:
        if m.id not in {c.id for c in canaries}:
            add(BatchKind.CONTROL_PLANE, domain(m), [m])
    rest = [m for m in by_name if m.id not in taken]
    for dom in sorted({domain(m) for m in rest}):
        group = [m for m in rest if domain(m) == dom]
        for start in range(0, len(group), size):
            add(BatchKind.REGULAR, dom, group[start : start + size])
    return batches


def _control_plane(machines: Sequence[Candidate], selector: str) -> list[Candidate]:
    if not selector.strip():
        return []
    try:
        reqs = parse(selector)
    except ValueError as exc:
        raise PlanError(f"control_plane selector: {exc}") from exc
    return [m for m in machines if matches(reqs, dict(m.labels))]


def _canaries(
    machines: Sequence[Candidate], control: Sequence[Candidate], spec: int | tuple[str, ...]
) -> list[Candidate]:
    if isinstance(spec, int):
        if spec < 0:
            raise PlanError(f"canary must be 0 or more, got {spec}")
        control_ids = {m.id for m in control}
        return [m for m in machines if m.id not in control_ids][:spec]
    names = {m.name: m for m in machines}
    unknown = [n for n in spec if n not in names]
    if unknown:
        raise PlanError(f"canary machines not in the selection: {', '.join(sorted(unknown))}")
    return [names[n] for n in spec]
