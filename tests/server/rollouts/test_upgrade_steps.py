"""One machine's upgrade steps, as a table: observation in, transition out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from server.rollouts.decide import MachineState
from server.rollouts.upgrade import (
    Action,
    Hooks,
    Observation,
    Progress,
    Serve,
    Timeouts,
    Transition,
    UpgradeStep,
    abort_in_flight,
    advance,
    hook_done,
    start,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
T = Timeouts(
    write=timedelta(seconds=60), health=timedelta(seconds=300), recover=timedelta(seconds=120)
)
OLD, NEW = "o" * 64, "n" * 64
W, B, V, C, R = (
    UpgradeStep.WRITING,
    UpgradeStep.BOOTING,
    UpgradeStep.VERIFYING,
    UpgradeStep.CONFIRMING,
    UpgradeStep.RECOVERING,
)
FUTURE, PAST = NOW + timedelta(seconds=10), NOW - timedelta(seconds=1)
NO_HOOKS = Hooks(pre=False, post=False)


def prog(step: UpgradeStep, deadline: datetime | None = FUTURE, cycled: bool = False) -> Progress:
    return Progress(step, "boot-0", OLD, NEW, deadline, cycled)


def obs(
    connected: bool = True,
    boot: str = "boot-0",
    image: str = OLD,
    healthy: bool = True,
    ok: bool | None = None,
    error: str = "",
) -> Observation:
    return Observation(connected, boot, image, healthy, ok, error)


def failed(step: UpgradeStep, why: str) -> Transition:
    return Transition(step, state=MachineState.FAILED, error=why)


CASES = [
    pytest.param(prog(W), obs(), True, None, id="writing: nothing yet"),
    pytest.param(
        prog(W),
        obs(ok=False, error="sha256 mismatch"),
        True,
        failed(W, "the agent refused the upgrade: sha256 mismatch"),
        id="writing: refused, active slot untouched",
    ),
    pytest.param(
        prog(W),
        obs(ok=True),
        True,
        Transition(B, deadline=NOW + T.health),
        id="writing: written and rebooting",
    ),
    pytest.param(
        prog(W),
        obs(boot="boot-1", image=NEW),
        True,
        Transition(B, deadline=NOW + T.health),
        id="writing: answer lost but the machine rebooted",
    ),
    pytest.param(
        prog(W, PAST),
        obs(connected=False),
        True,
        Transition(
            R,
            Action.POWER_CYCLE,
            deadline=NOW + T.recover,
            cycled=True,
            error="the agent did not answer the upgrade in time; power-cycling through "
            "the BMC into the last good slot",
        ),
        id="writing: silent past the deadline, BMC cycles",
    ),
    pytest.param(prog(B), obs(connected=False), True, None, id="booting: still down"),
    pytest.param(prog(B), obs(), True, None, id="booting: the old session before the reboot"),
    pytest.param(
        prog(B),
        obs(boot="boot-1", image=NEW),
        True,
        Transition(V, deadline=FUTURE),
        id="booting: up on the new image",
    ),
    pytest.param(
        prog(B),
        obs(boot="boot-1", image=OLD),
        True,
        failed(B, "the new image did not boot: the machine fell back to its last good"),
        id="booting: up on the old image (boot counting fell back)",
    ),
    pytest.param(
        prog(B),
        obs(boot="boot-1", image="x" * 64),
        True,
        failed(B, "the machine booted an unexpected image xxxxxxxxxxxx"),
        id="booting: some other image",
    ),
    pytest.param(
        prog(B, PAST),
        obs(connected=False),
        False,
        Transition(
            R,
            deadline=NOW + T.recover,
            error="the machine did not come back after its reboot; waiting for boot "
            "counting to return to the last good slot",
        ),
        id="booting: never came back, no BMC",
    ),
    pytest.param(
        prog(V),
        obs(boot="boot-1", image=NEW, healthy=False),
        True,
        None,
        id="verifying: config not applied yet",
    ),
    pytest.param(
        prog(V),
        obs(boot="boot-1", image=NEW),
        True,
        Transition(C, Action.SEND_MARK_GOOD, deadline=NOW + T.write),
        id="verifying: healthy, confirm the slot",
    ),
    pytest.param(
        prog(V, PAST),
        obs(boot="boot-1", image=NEW, healthy=False),
        True,
        Transition(
            R,
            Action.POWER_CYCLE,
            deadline=NOW + T.recover,
            cycled=True,
            error="not healthy on the new image in time; power-cycling through the BMC "
            "into the last good slot",
        ),
        id="verifying: unhealthy in time, BMC cycles",
    ),
    pytest.param(
        prog(V),
        obs(boot="boot-2", image=OLD),
        True,
        failed(V, "the machine fell back to its last good image"),
        id="verifying: rebooted on its own into the old slot",
    ),
    pytest.param(
        prog(C),
        obs(boot="boot-1", image=NEW, ok=True),
        True,
        Transition(C, state=MachineState.SUCCEEDED),
        id="confirming: acknowledged",
    ),
    pytest.param(
        prog(R, cycled=True),
        obs(connected=False),
        True,
        None,
        id="recovering: still down",
    ),
    pytest.param(
        prog(R, cycled=True),
        obs(boot="boot-2", image=OLD),
        True,
        failed(R, "recovered on its last good image"),
        id="recovering: back on last good",
    ),
    pytest.param(
        prog(R, PAST, cycled=True),
        obs(connected=False),
        True,
        failed(R, "did not come back on its last good image in time: needs an operator"),
        id="recovering: lost",
    ),
    pytest.param(
        prog(C, PAST, cycled=True),
        obs(boot="boot-1", image=NEW),
        True,
        Transition(
            R,
            deadline=NOW + T.recover,
            cycled=True,
            error="the new slot was not confirmed in time; waiting for boot counting to "
            "return to the last good slot",
        ),
        id="a machine is power-cycled at most once per upgrade",
    ),
]


@pytest.mark.parametrize(("progress", "observation", "has_bmc", "expected"), CASES)
def test_advance(
    progress: Progress, observation: Observation, has_bmc: bool, expected: Transition | None
) -> None:
    assert advance(progress, observation, NOW, T, NO_HOOKS, has_bmc) == expected


def test_start_with_and_without_pre_hook() -> None:
    assert start(NO_HOOKS, NOW, T) == Transition(W, Action.SEND_UPGRADE, deadline=NOW + T.write)
    pre = start(Hooks(pre=True, post=False), NOW, T)
    assert pre.step is UpgradeStep.PRE_HOOK and pre.action is Action.CALL_PRE_HOOK


def test_hooks() -> None:
    pre = prog(UpgradeStep.PRE_HOOK)
    assert hook_done(pre, True, "", NOW, T).action is Action.SEND_UPGRADE
    assert hook_done(pre, False, "503", NOW, T).state is MachineState.FAILED
    post = prog(UpgradeStep.POST_HOOK)
    assert hook_done(post, True, "", NOW, T).state is MachineState.SUCCEEDED
    confirmed = advance(
        prog(C), obs(boot="b1", image=NEW, ok=True), NOW, T, Hooks(False, True), True
    )
    assert confirmed == Transition(UpgradeStep.POST_HOOK, Action.CALL_POST_HOOK)


# --- diskless machines: the server switches what their boot script serves ---------------------


def nprog(step: UpgradeStep, deadline: datetime | None = FUTURE, cycled: bool = False) -> Progress:
    return Progress(step, "boot-0", OLD, NEW, deadline, cycled, netboot=True)


NETBOOT_CASES = [
    pytest.param(nprog(B), obs(), True, None, id="netboot booting: not rebooted yet"),
    pytest.param(
        nprog(B),
        obs(boot="boot-1", image=NEW, healthy=False),
        True,
        Transition(V, deadline=FUTURE),
        id="netboot booting: up on the served trial image",
    ),
    pytest.param(
        nprog(V),
        obs(boot="boot-1", image=NEW),
        True,
        Transition(V, state=MachineState.SUCCEEDED, serve=Serve.CONFIRM),
        id="netboot verifying: healthy -> confirmed on the server, no agent command",
    ),
    pytest.param(
        nprog(V, PAST),
        obs(boot="boot-1", image=NEW, healthy=False),
        True,
        Transition(
            R,
            Action.POWER_CYCLE,
            deadline=NOW + T.recover,
            cycled=True,
            serve=Serve.LAST_GOOD,
            error="not healthy on the new image in time; serving its last good image again "
            "and power-cycling through the BMC",
        ),
        id="netboot verifying: late with a BMC -> last good served, power cycle",
    ),
    pytest.param(
        nprog(V, PAST),
        obs(boot="boot-1", image=NEW, healthy=False),
        False,
        Transition(
            R,
            Action.SEND_REBOOT,
            deadline=NOW + T.recover,
            serve=Serve.LAST_GOOD,
            error="not healthy on the new image in time; serving its last good image again "
            "and asking its agent to reboot",
        ),
        id="netboot verifying: late without a BMC -> last good served, agent reboots",
    ),
    pytest.param(
        nprog(B, PAST),
        obs(),
        True,
        Transition(
            R,
            Action.POWER_CYCLE,
            deadline=NOW + T.recover,
            cycled=True,
            serve=Serve.LAST_GOOD,
            error="the machine did not come back after its reboot; serving its last good "
            "image again and power-cycling through the BMC",
        ),
        id="netboot booting: never rebooted -> last good served, power cycle",
    ),
    pytest.param(
        nprog(R, cycled=True),
        obs(boot="boot-2", image=OLD),
        True,
        failed(R, "recovered on its last good image"),
        id="netboot recovering: back on the last good image",
    ),
]


@pytest.mark.parametrize(("progress", "observation", "has_bmc", "expected"), NETBOOT_CASES)
def test_advance_netboot(
    progress: Progress, observation: Observation, has_bmc: bool, expected: Transition | None
) -> None:
    assert advance(progress, observation, NOW, T, NO_HOOKS, has_bmc) == expected


def test_netboot_start_serves_the_trial_and_reboots() -> None:
    assert start(NO_HOOKS, NOW, T, netboot=True) == Transition(
        B, Action.SEND_REBOOT, deadline=NOW + T.health, serve=Serve.TRIAL
    )
    pre = nprog(UpgradeStep.PRE_HOOK)
    assert hook_done(pre, True, "", NOW, T).serve is Serve.TRIAL
    confirmed = advance(nprog(V), obs(boot="b1", image=NEW), NOW, T, Hooks(False, True), True)
    assert confirmed == Transition(
        UpgradeStep.POST_HOOK, Action.CALL_POST_HOOK, serve=Serve.CONFIRM
    )
    aborted = abort_in_flight(nprog(V), NOW, T)
    assert aborted is not None and aborted.serve is Serve.LAST_GOOD
    assert aborted.action is Action.SEND_REBOOT
