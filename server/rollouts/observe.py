"""What the runner knows of a machine: its agent's last report, as an upgrade ``Observation``."""

from __future__ import annotations

from server.inventory.models import AgentState
from server.rollouts.models import RolloutMachine
from server.rollouts.upgrade import Observation, Progress, UpgradeStep


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
