"""What the runner knows of a machine: its agent's last report, as an upgrade ``Observation``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from server.inventory import machines as inventory
from server.inventory.models import AgentState
from server.rollouts.models import RolloutMachine
from server.rollouts.upgrade import Observation, Progress, Timeouts, UpgradeStep


def observe(st: AgentState | None, row: RolloutMachine, p: Progress, target: str) -> Observation:
    if st is None:
        return Observation(False, "", "", False)
    ok: bool | None = None
    error = ""
    cmd = row.detail.get("command_id")
    if cmd and st.last_command_id == cmd:
        ok, error = bool(st.last_command_ok), st.last_command_error or ""
    if p.step is UpgradeStep.CONFIRMING and st.last_good_digest == target and ok is None:
        ok = True  # the answer was overwritten by a later command's: the state says it all
    return Observation(
        connected=bool(st.connected),
        boot_id=st.boot_id or "",
        image_digest=st.image_digest or "",
        config_healthy=config_applied(st),
        command_ok=ok,
        command_error=error,
    )


def config_applied(st: AgentState) -> bool:
    return (
        st.desired_config_version is None or st.applied_config_version == st.desired_config_version
    )


def healthy(st: AgentState | None) -> bool:
    return st is not None and bool(st.connected) and config_applied(st)


def progress(row: RolloutMachine, now: datetime) -> Progress:
    d = row.detail
    return Progress(
        step=UpgradeStep(row.step) if row.step else UpgradeStep.WRITING,
        from_boot_id=d.get("from_boot_id", ""),
        from_digest=d.get("from_digest", ""),
        target_digest=d.get("target_digest", ""),
        deadline=inventory.as_utc(row.deadline) if row.deadline else None,
        cycled=bool(d.get("cycled", False)),
        netboot=d.get("mode") == "netboot",
    )


def timeouts(spec: dict[str, Any], write: timedelta, recover: timedelta) -> Timeouts:
    """The rollout's health timeout with the runner's write and recovery bounds."""
    return Timeouts(
        write=write, health=timedelta(seconds=int(spec["health_timeout_seconds"])), recover=recover
    )
