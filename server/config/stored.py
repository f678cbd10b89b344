"""Machine configs from the stored patches (``config_patches``): load them in rendering order,
pick those that apply to one machine, render. Used by the config API and the agents' store."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.config import Layer, Patch, Rendered, render
from server.inventory.machines import as_utc
from server.inventory.models import ConfigPatch, Machine

SCOPE_ORDER = {Layer.FLEET.value: 0, Layer.SELECTOR.value: 1, Layer.MACHINE.value: 2}
"""Rendering order of the scopes: fleet, then selector, then machine patches."""


def load_patches(s: Session) -> list[ConfigPatch]:
    """Every patch, in rendering order (scope, priority, creation)."""
    rows = s.scalars(select(ConfigPatch)).all()
    return sorted(
        rows, key=lambda p: (SCOPE_ORDER[p.scope], p.priority, as_utc(p.created_at), p.name)
    )


def applicable(patches: Sequence[ConfigPatch], machine_id: str) -> list[Patch]:
    """The patches as :class:`Patch` objects, machine patches of other machines left out."""
    out = []
    for p in patches:
        if p.scope == Layer.MACHINE.value and p.machine_id != machine_id:
            continue
        out.append(Patch(p.name, Layer(p.scope), p.body, selector=p.selector))
    return out


def render_for(patches: Sequence[ConfigPatch], machine: Machine) -> Rendered | None:
    """The machine's rendered config, or None when no patch applies to it (unmanaged).
    Raises :class:`ConfigError` when the combination is invalid."""
    mine = [p for p in applicable(patches, machine.id) if p.applies_to(machine.labels)]
    if not mine:
        return None
    return render(mine, machine.labels)
