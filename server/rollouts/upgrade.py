"""One machine's way through an upgrade (pure): its step, what was observed, what to do next.

The node side follows Talos' A/B model: the agent writes the *inactive* slot, arms the bootloader
to try it a bounded number of times with the current slot as fallback, and reboots; the new slot
becomes the default (*last good*) only when the server confirms the machine healthy
(systemd-boot's Automatic Boot Assessment, GRUB's ``next_entry`` + ``boot_success``). The server
is the watchdog: a machine that does not come back healthy in time is power-cycled through its
BMC, and boot counting brings it up on its last good slot.

Steps (each persisted before its action is taken, so a restarted server re-probes and goes on)::

    pre-hook ─▶ writing ─▶ booting ─▶ verifying ─▶ confirming ─▶ post-hook ─▶ succeeded
                  │           │           │
                  └───────────┴───────────┴──▶ recovering ─▶ failed (back on last good)

* ``writing``: the Upgrade command is saved and sent; the agent downloads, verifies, writes the
  inactive slot, arms, answers, reboots. A refusal (bad checksum or signature, write error) fails
  the machine at once: the active slot was never touched.
* ``booting``: waiting for a session with a boot id other than the one before the upgrade.
* ``verifying``: the machine booted. On the new image: wait until its config is applied (and the
  plan's checks pass). On the old image: boot counting already fell back: failed.
* ``confirming``: the mark-good command is saved and sent; its acknowledgement ends the upgrade.
* ``recovering``: the deadline passed. With a BMC the machine is power-cycled once; either way it
  must come back on its last good image, which ends it as failed with the reason.

Diskless machines (``boot_from = network``) have no slots: what they boot is what their boot
script serves. For them the server keeps the A/B rule itself (``Transition.serve``): starting
serves the new image as a *trial* and reboots the machine (``writing`` is skipped: nothing is
written); healthy on it confirms it (the machine's image, its last good, becomes the new one);
recovery serves the last good image again before the reboot or the BMC power cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from server.rollouts.decide import MachineState


class UpgradeStep(StrEnum):
    """Where an active machine is in its upgrade."""

    PRE_HOOK = "pre-hook"
    """Calling the plan's before-webhook (drain the node)."""
    WRITING = "writing"
    """The agent writes the inactive slot and arms the bootloader."""
    BOOTING = "booting"
    """Rebooting into the new slot; waiting for a new boot to connect."""
    VERIFYING = "verifying"
    """Booted; waiting until the machine is healthy on the new image."""
    CONFIRMING = "confirming"
    """Healthy: the new slot is being made the last good one."""
    POST_HOOK = "post-hook"
    """Calling the plan's after-webhook (uncordon the node)."""
    RECOVERING = "recovering"
    """Not healthy in time: forcing a boot into the last good slot."""


class Action(StrEnum):
    """What the runner does for the machine now (after persisting the new step)."""

    NONE = "none"
    """Wait for the next observation."""
    CALL_PRE_HOOK = "call-pre-hook"
    SEND_UPGRADE = "send-upgrade"
    SEND_MARK_GOOD = "send-mark-good"
    SEND_REBOOT = "send-reboot"
    """An ordinary reboot: an unconfirmed slot then falls back by boot counting."""
    CALL_POST_HOOK = "call-post-hook"
    POWER_CYCLE = "power-cycle"
    """Through the machine's BMC: the server is the watchdog."""


@dataclass(frozen=True)
class Progress:
    """What the runner persisted about the machine (``rollout_machines.detail`` + columns)."""

    step: UpgradeStep
    from_boot_id: str
    """Boot id when the upgrade started: a different one means the machine rebooted."""
    from_digest: str
    """Image the machine ran before (its last good)."""
    target_digest: str
    deadline: datetime | None = None
    cycled: bool = False
    """The watchdog already power-cycled it (once per upgrade)."""
    netboot: bool = False
    """Diskless: upgraded by switching the image its boot script serves."""


@dataclass(frozen=True)
class Observation:
    """The machine as its agent last reported it."""

    connected: bool
    boot_id: str
    image_digest: str
    config_healthy: bool
    """Its desired config is applied (and the plan's checks passed)."""
    command_ok: bool | None = None
    """Result of the step's command (upgrade or mark-good): None while none arrived."""
    command_error: str = ""


@dataclass(frozen=True)
class Hooks:
    pre: bool
    post: bool


@dataclass(frozen=True)
class Timeouts:
    write: timedelta
    """From sending the upgrade to the agent's answer."""
    health: timedelta
    """From the answer to a healthy machine on the new image."""
    recover: timedelta
    """From the forced fallback to the machine back on its last good image."""


@dataclass(frozen=True)
class Serve(StrEnum):
    """Diskless machines: what their boot script serves from this transition on."""

    UNCHANGED = ""
    TRIAL = "trial"
    """The new image, on trial (``machines.trial_image``)."""
    CONFIRM = "confirm"
    """The new image, confirmed: it becomes the machine's image (its last good)."""
    LAST_GOOD = "last-good"
    """The last good image again (the trial is dropped)."""


@dataclass(frozen=True)
class Transition:
    step: UpgradeStep
    action: Action = Action.NONE
    state: MachineState = MachineState.ACTIVE
    deadline: datetime | None = None
    error: str = ""
    cycled: bool = False
    serve: Serve = Serve.UNCHANGED


def start(hooks: Hooks, now: datetime, t: Timeouts, netboot: bool = False) -> Transition:
    if hooks.pre:
        return Transition(UpgradeStep.PRE_HOOK, Action.CALL_PRE_HOOK, deadline=now + t.write)
    return _first_step(now, t, netboot)


def _first_step(now: datetime, t: Timeouts, netboot: bool) -> Transition:
    if netboot:  # nothing to write: serve the new image and reboot into it
        return Transition(
            UpgradeStep.BOOTING, Action.SEND_REBOOT, deadline=now + t.health, serve=Serve.TRIAL
        )
    return Transition(UpgradeStep.WRITING, Action.SEND_UPGRADE, deadline=now + t.write)


def advance(
    p: Progress, obs: Observation, now: datetime, t: Timeouts, hooks: Hooks, has_bmc: bool
) -> Transition | None:
    """The next transition for the machine, or None to stay as it is."""
    rebooted = obs.connected and obs.boot_id != p.from_boot_id
    late = p.deadline is not None and now >= p.deadline
    step = p.step
    if step is UpgradeStep.PRE_HOOK:
        return None  # the runner moves on when the hook answers (see hook_done)
    if step is UpgradeStep.WRITING:
        if obs.command_ok is False:
            return _failed(step, f"the agent refused the upgrade: {obs.command_error}")
        if obs.command_ok or rebooted:
            return Transition(UpgradeStep.BOOTING, deadline=now + t.health)
        if late:
            return _recover(p, now, t, has_bmc, "the agent did not answer the upgrade in time")
        return None
    if step is UpgradeStep.BOOTING:
        if rebooted:
            return _booted(p, obs, now, t, has_bmc)
        if late:
            return _recover(p, now, t, has_bmc, "the machine did not come back after its reboot")
        return None
    if step is UpgradeStep.VERIFYING:
        if rebooted and obs.image_digest == p.from_digest:
            return _failed(step, "the machine fell back to its last good image")
        if obs.connected and obs.image_digest == p.target_digest and obs.config_healthy:
            if p.netboot:  # the server holds the last good: confirming is recording it
                if hooks.post:
                    return Transition(
                        UpgradeStep.POST_HOOK, Action.CALL_POST_HOOK, serve=Serve.CONFIRM
                    )
                return Transition(step, state=MachineState.SUCCEEDED, serve=Serve.CONFIRM)
            return Transition(UpgradeStep.CONFIRMING, Action.SEND_MARK_GOOD, deadline=now + t.write)
        if late:
            return _recover(p, now, t, has_bmc, "not healthy on the new image in time")
        return None
    if step is UpgradeStep.CONFIRMING:
        if obs.command_ok:
            if hooks.post:
                return Transition(UpgradeStep.POST_HOOK, Action.CALL_POST_HOOK)
            return Transition(step, state=MachineState.SUCCEEDED)
        if obs.command_ok is False:
            return _recover(p, now, t, has_bmc, f"mark-good refused: {obs.command_error}")
        if late:
            return _recover(p, now, t, has_bmc, "the new slot was not confirmed in time")
        return None
    if step is UpgradeStep.RECOVERING:
        if obs.connected and obs.image_digest == p.from_digest:
            return _failed(step, "recovered on its last good image")
        if late:
            return _failed(
                step, "did not come back on its last good image in time: needs an operator"
            )
        return None
    return None


def hook_done(p: Progress, ok: bool, error: str, now: datetime, t: Timeouts) -> Transition:
    """The pre- or post-hook answered."""
    if p.step is UpgradeStep.PRE_HOOK:
        if not ok:
            return _failed(p.step, f"pre-upgrade hook failed: {error}")
        return _first_step(now, t, p.netboot)
    if not ok:
        return _failed(p.step, f"post-upgrade hook failed: {error} (the machine is upgraded)")
    return Transition(p.step, state=MachineState.SUCCEEDED)


def _booted(p: Progress, obs: Observation, now: datetime, t: Timeouts, has_bmc: bool) -> Transition:
    if obs.image_digest == p.target_digest:
        # The health clock goes on from the reboot: a slow boot eats into it, it does not reset.
        return Transition(UpgradeStep.VERIFYING, deadline=p.deadline or now + t.health)
    if obs.image_digest == p.from_digest:
        return _failed(p.step, "the new image did not boot: the machine fell back to its last good")
    return _failed(p.step, f"the machine booted an unexpected image {obs.image_digest[:12]}")


def _recover(p: Progress, now: datetime, t: Timeouts, has_bmc: bool, why: str) -> Transition:
    if p.netboot:
        return _recover_netboot(p, now, t, has_bmc, why)
    if has_bmc and not p.cycled:
        return Transition(
            UpgradeStep.RECOVERING,
            Action.POWER_CYCLE,
            deadline=now + t.recover,
            error=f"{why}; power-cycling through the BMC into the last good slot",
            cycled=True,
        )
    return Transition(
        UpgradeStep.RECOVERING,
        deadline=now + t.recover,
        error=f"{why}; waiting for boot counting to return to the last good slot",
        cycled=p.cycled,
    )


def _recover_netboot(
    p: Progress, now: datetime, t: Timeouts, has_bmc: bool, why: str
) -> Transition:
    """The boot script serves the last good image again, then the machine is reset: through its
    BMC (once), else asked to reboot by its agent (if the agent is up at all)."""
    if has_bmc and not p.cycled:
        action, how, cycled = Action.POWER_CYCLE, "power-cycling through the BMC", True
    else:
        action, how, cycled = Action.SEND_REBOOT, "asking its agent to reboot", p.cycled
    return Transition(
        UpgradeStep.RECOVERING,
        action,
        deadline=now + t.recover,
        error=f"{why}; serving its last good image again and {how}",
        cycled=cycled,
        serve=Serve.LAST_GOOD,
    )


def _failed(step: UpgradeStep, why: str) -> Transition:
    return Transition(step, state=MachineState.FAILED, error=why)


def abort_in_flight(p: Progress, now: datetime, t: Timeouts) -> Transition | None:
    """``on_abort=rollback``: a machine not yet confirmed is rebooted into its last good slot."""
    if p.step in (UpgradeStep.BOOTING, UpgradeStep.VERIFYING, UpgradeStep.CONFIRMING):
        return Transition(
            UpgradeStep.RECOVERING,
            Action.SEND_REBOOT,
            deadline=now + t.recover,
            error="rollout aborted: rebooting into the last good "
            + ("image" if p.netboot else "slot"),
            cycled=p.cycled,
            serve=Serve.LAST_GOOD if p.netboot else Serve.UNCHANGED,
        )
    return None
