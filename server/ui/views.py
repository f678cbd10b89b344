"""Pure shaping of API answers for the console's templates (tested with tables).

The netboot timeline is drawn as SVG: a time axis with one lane per stage of a network boot
(DHCP, TFTP, HTTP script/kernel/initrd, agent) and one for the machine's lifecycle (phase
changes: provisioning, ready, ...; upgrade steps of rollouts). Positions are computed here, as SVG
attributes (the Content-Security-Policy forbids inline ``style``), so the template only places
what it is given; every text goes through the template's autoescaping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

LANES: tuple[tuple[str, str], ...] = (
    ("dhcp", "DHCP"),
    ("tftp", "TFTP"),
    ("http", "script / kernel / initrd"),
    ("agent", "agent"),
    ("lifecycle", "phase / upgrade"),
)
WIDTH = 1000
LEFT = 190
LANE_HEIGHT = 34
TOP = 24

_DHCP = {"DISCOVER", "OFFER", "REQUEST", "ACK", "NAK", "RELEASE", "DECLINE", "INFORM", "IGNORED"}
_TFTP = {"TFTP_START", "TFTP_COMPLETE", "TFTP_ABORTED"}
_HTTP = {"SCRIPT", "KERNEL", "INITRD", "ASSET", "DISCOVERED"}
_FAILED = {"NAK", "DECLINE", "TFTP_ABORTED", "IGNORED"}


@dataclass(frozen=True)
class Mark:
    lane: str
    label: str
    at: str
    x: float
    y: float
    failed: bool
    detail: str


@dataclass(frozen=True)
class Timeline:
    marks: tuple[Mark, ...]
    lanes: tuple[tuple[str, str, float], ...]
    """(key, title, y) of each lane."""
    height: float
    first: str | None
    last: str | None
    last_step: str | None
    """Where the boot stopped: the newest mark's lane and label."""


def _parse(at: str) -> datetime:
    return datetime.fromisoformat(at.replace("Z", "+00:00"))


def _bytes(detail: Mapping[str, Any]) -> str:
    for key in ("bytes", "sent_bytes", "size"):
        value = detail.get(key)
        if isinstance(value, int):
            return f"{value:,} B"
    return ""


def boot_step(item: Mapping[str, Any]) -> tuple[str, str, bool, str] | None:
    """(lane, label, failed, detail text) of one netboot timeline item, or None."""
    kind = str(item.get("kind", ""))
    detail: Mapping[str, Any] = item.get("detail") or {}
    if kind in _DHCP:
        lane = "dhcp"
    elif kind in _TFTP:
        lane = "tftp"
    elif kind in _HTTP:
        lane = "http"
    else:
        return None
    size = _bytes(detail)
    name = detail.get("file") or detail.get("filename") or detail.get("name") or ""
    label = kind.removeprefix("TFTP_")
    if lane == "tftp" and name:
        label = f"{label} {name}"
    if lane == "http" and kind == "SCRIPT" and detail.get("action"):
        label = f"script: {detail['action']}"
    if size:
        label = f"{label} ({size})"
    text = ", ".join(f"{k}={v}" for k, v in sorted(detail.items()))
    return lane, label.lower() if lane == "dhcp" else label, kind in _FAILED, text


def event_step(event: Mapping[str, Any]) -> tuple[str, str, bool, str] | None:
    """(lane, label, failed, detail) of a machine event that belongs on the time line."""
    kind = str(event.get("kind", ""))
    message = str(event.get("message", ""))
    data = event.get("data") or {}
    phase = data.get("phase") if isinstance(data, Mapping) else None
    if kind == "machine.updated" and isinstance(phase, Mapping) and phase.get("to"):
        to = str(phase["to"])
        return "lifecycle", f"phase {to}", to in ("failed", "maintenance"), message
    if kind.startswith("rollout.machine."):
        step = kind.removeprefix("rollout.machine.")
        if step == "step" and isinstance(data, Mapping) and data.get("step"):
            step = f"step {data['step']}"
        return "lifecycle", f"upgrade {step}", kind.endswith("failed"), message
    if kind.startswith("agent.") and kind != "agent.token.issued":
        return "agent", kind.removeprefix("agent."), "trouble" in kind, message
    return None


def timeline(
    boot_items: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    agent: Mapping[str, Any] | None,
) -> Timeline:
    """Lay the netboot timeline, the agent's enrollment and upgrade steps on one time axis."""
    raw: list[tuple[datetime, str, str, bool, str, str]] = []
    for item in boot_items:
        step = boot_step(item)
        if step and item.get("at"):
            raw.append((_parse(str(item["at"])), *step, str(item["at"])))
    for ev in events:
        step = event_step(ev)
        if step and ev.get("created_at"):
            raw.append((_parse(str(ev["created_at"])), *step, str(ev["created_at"])))
    if agent and agent.get("hello_at"):
        at = str(agent["hello_at"])
        version = agent.get("agent_version") or ""
        raw.append((_parse(at), "agent", "enrolled, hello", False, f"version {version}", at))
    raw.sort(key=lambda r: r[0])
    lanes = tuple((key, title, TOP + i * LANE_HEIGHT) for i, (key, title) in enumerate(LANES))
    lane_y = {key: y for key, _, y in lanes}
    height = TOP + len(LANES) * LANE_HEIGHT + 14
    if not raw:
        return Timeline((), lanes, height, None, None, None)
    t0, t1 = raw[0][0], raw[-1][0]
    span = max((t1 - t0).total_seconds(), 1e-3)
    usable = WIDTH - LEFT - 20
    marks = tuple(
        Mark(
            lane=lane,
            label=label,
            at=at,
            x=round(LEFT + usable * (t - t0).total_seconds() / span, 1),
            y=lane_y[lane],
            failed=failed,
            detail=detail,
        )
        for t, lane, label, failed, detail, at in raw
    )
    last = marks[-1]
    return Timeline(
        marks, lanes, height, marks[0].at, last.at, f"{dict(LANES)[last.lane]}: {last.label}"
    )


def progress(op: Mapping[str, Any]) -> tuple[int, int]:
    """(finished items, all items) of an operation."""
    items = op.get("items") or []
    done = sum(1 for i in items if i.get("status") not in ("queued", "running"))
    return done, len(items)
