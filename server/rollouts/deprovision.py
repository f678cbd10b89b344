"""One machine's deprovisioning (pure): wipe its disk through its agent (optional), then forget it.

    wiping ─▶ succeeded: phase registered, image cleared, agent certificates revoked
       └────▶ failed (the wipe failed or the agent never answered)

``wipe``: ``none`` (forget only), ``quick`` (signatures and partition tables) or ``full`` (every
byte). The runner records the step before it sends the ``Wipe`` command, and finishes the machine
(phase, image, revocation) in the transaction that records its success.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from server.rollouts.decide import MachineState


class DeprovisionStep(StrEnum):
    WIPING = "wiping"
    """The agent erases the install disk."""
    FORGETTING = "forgetting"
    """Phase back to registered, image cleared, certificates revoked."""


class Action(StrEnum):
    NONE = "none"
    SEND_WIPE = "send-wipe"


@dataclass(frozen=True)
class Transition:
    step: DeprovisionStep
    action: Action = Action.NONE
    state: MachineState = MachineState.ACTIVE
    deadline: datetime | None = None
    error: str = ""


def start(wipe: str, now: datetime, timeout: timedelta) -> Transition:
    if wipe == "none":
        return Transition(DeprovisionStep.FORGETTING, state=MachineState.SUCCEEDED)
    return Transition(DeprovisionStep.WIPING, Action.SEND_WIPE, deadline=now + timeout)


def advance(
    deadline: datetime | None,
    connected: bool,
    command_ok: bool | None,
    command_error: str,
    now: datetime,
) -> Transition | None:
    """The wipe's answer (or the deadline) ends the step."""
    if command_ok:
        return Transition(DeprovisionStep.FORGETTING, state=MachineState.SUCCEEDED)
    if command_ok is False:
        return Transition(DeprovisionStep.WIPING, state=MachineState.FAILED, error=command_error)
    if deadline is not None and now >= deadline:
        why = "the agent did not finish the wipe in time"
        if not connected:
            why = "the agent is not connected: the disk was not wiped"
        return Transition(DeprovisionStep.WIPING, state=MachineState.FAILED, error=why)
    return None
