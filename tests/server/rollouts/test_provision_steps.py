"""One machine's provisioning steps as tables (``server.rollouts.provision``): transitions, the
hardware expectations and the diagnosis of a stalled netboot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from server.rollouts.decide import MachineState
from server.rollouts.provision import (
    Action,
    BootSeen,
    Observation,
    Progress,
    ProvisionStep,
    Request,
    Timeouts,
    Transition,
    advance,
    check_hardware,
    diagnose,
    parse_expectation,
    start,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
T = Timeouts(
    netboot=timedelta(seconds=120),
    configure=timedelta(seconds=60),
    install=timedelta(seconds=600),
    boot=timedelta(seconds=300),
)
FUTURE, PAST = NOW + timedelta(seconds=5), NOW - timedelta(seconds=1)
IMG = "i" * 64
N, C, INS, B = (
    ProvisionStep.NETBOOTING,
    ProvisionStep.CONFIGURING,
    ProvisionStep.INSTALLING,
    ProvisionStep.BOOTING_DISK,
)
INV: dict[str, Any] = {
    "memory_bytes": 32 * 1024**3,
    "disks": [{"size_bytes": 500 * 1024**3}, {"size_bytes": 100 * 1024**3}],
    "nics": [{"mac": "02:00:00:00:00:01"}],
    "cpus": [{"cores": 8, "threads": 16}],
}
INSTALL = Request(install=True, retries=1, retry_backoff=timedelta(seconds=10))


def prog(step: ProvisionStep, deadline: datetime = FUTURE, **kw: Any) -> Progress:
    return Progress(step, "boot-0", IMG, deadline, **kw)


def obs(
    connected: bool = True,
    boot: str = "boot-0",
    image: str = "",
    slot: str = "",
    applied: bool = False,
    ok: bool | None = None,
    error: str = "",
) -> Observation:
    return Observation(connected, boot, image, slot, applied, INV, ok, error)


def fail(step: ProvisionStep, why: str) -> Transition:
    return Transition(step, state=MachineState.FAILED, error=why)


CASES = [
    pytest.param(prog(N), obs(connected=False), INSTALL, True, None, id="netbooting: waiting"),
    pytest.param(
        prog(N),
        obs(boot="boot-1"),
        INSTALL,
        True,
        Transition(C, deadline=NOW + T.configure),
        id="netbooting: enrolled, checks pass -> configuring",
    ),
    pytest.param(
        prog(N),
        obs(boot="boot-1"),
        Request(install=True, expect=("memory_gib >= 64", "nics >= 1")),
        True,
        fail(ProvisionStep.CHECKING, "inventory check failed: memory_gib is 32, expected >= 64"),
        id="netbooting: enrolled, memory check fails",
    ),
    pytest.param(
        prog(N, PAST),
        obs(connected=False),
        INSTALL,
        True,
        Transition(
            N,
            Action.POWER_UP,
            deadline=NOW + timedelta(seconds=10) + T.netboot,
            attempts=1,
            error="attempt 1: STALLED; powering it again",
        ),
        id="netbooting: late, a retry left -> power again with backoff",
    ),
    pytest.param(
        prog(N, PAST, attempts=1),
        obs(connected=False),
        INSTALL,
        True,
        fail(N, "STALLED"),
        id="netbooting: late, no retry left -> failed with the diagnosis",
    ),
    pytest.param(
        prog(N, attempts=1, power_error="IPMI timeout"),
        obs(connected=False),
        INSTALL,
        True,
        fail(N, "power action failed: IPMI timeout"),
        id="netbooting: the BMC failed on the last attempt",
    ),
    pytest.param(
        prog(N, PAST),
        obs(connected=False),
        INSTALL,
        False,
        fail(N, "STALLED"),
        id="netbooting: no BMC -> no retry, failed",
    ),
    pytest.param(
        prog(C),
        obs(applied=True),
        INSTALL,
        True,
        Transition(INS, Action.SEND_INSTALL, deadline=NOW + T.install, new_boot=True),
        id="configuring: applied -> install",
    ),
    pytest.param(
        prog(C),
        obs(applied=True),
        Request(install=False),
        True,
        Transition(C, state=MachineState.SUCCEEDED),
        id="configuring: applied, diskless -> ready",
    ),
    pytest.param(
        prog(C, PAST),
        obs(error="sysctl refused"),
        INSTALL,
        True,
        fail(C, "machine config not applied in time: sysctl refused"),
        id="configuring: late",
    ),
    pytest.param(
        prog(INS),
        obs(ok=False, error="disk too small"),
        INSTALL,
        True,
        fail(INS, "install failed: disk too small"),
        id="installing: refused",
    ),
    pytest.param(
        prog(INS),
        obs(ok=True),
        INSTALL,
        True,
        Transition(B, deadline=NOW + T.boot),
        id="installing: done -> booting from disk",
    ),
    pytest.param(
        prog(B),
        obs(boot="boot-2", image=IMG, slot="A"),
        INSTALL,
        True,
        Transition(B, state=MachineState.SUCCEEDED),
        id="booting-disk: back from disk with the image -> ready",
    ),
    pytest.param(
        prog(B),
        obs(boot="boot-2", image="x" * 64, slot="A"),
        INSTALL,
        True,
        fail(B, f"booted from disk with image {'x' * 12}, not {IMG[:12]}"),
        id="booting-disk: another image",
    ),
    pytest.param(
        prog(B, PAST),
        obs(connected=False),
        INSTALL,
        True,
        Transition(
            B,
            Action.POWER_CYCLE,
            deadline=NOW + T.boot,
            cycled=True,
            error="not back from disk in time; power-cycling it once",
        ),
        id="booting-disk: late with a BMC -> one power cycle",
    ),
    pytest.param(
        prog(B, PAST, cycled=True),
        obs(connected=False),
        INSTALL,
        True,
        fail(B, "did not come back from its disk after the install"),
        id="booting-disk: late again -> failed",
    ),
]


@pytest.mark.parametrize(("progress", "observation", "req", "has_bmc", "expected"), CASES)
def test_advance(
    progress: Progress,
    observation: Observation,
    req: Request,
    has_bmc: bool,
    expected: Transition | None,
) -> None:
    assert advance(progress, observation, NOW, T, req, has_bmc, lambda: "STALLED") == expected


def test_start_powers_through_the_bmc_or_asks_an_operator() -> None:
    assert start(True, NOW, T) == Transition(N, Action.POWER_UP, deadline=NOW + T.netboot)
    manual = start(False, NOW, T)
    assert manual.action is Action.ASK_OPERATOR and "power the machine on" in manual.note


@pytest.mark.parametrize(
    ("expect", "failures"),
    [
        (["memory_gib >= 32", "disks >= 2", "nics >= 1", "cpus == 1"], []),
        (["cores >= 8", "threads > 15", "disk_gib >= 500"], []),
        (["memory_gib >= 64"], ["memory_gib is 32, expected >= 64"]),
        (["disks >= 3", "nics >= 2"], ["disks is 2, expected >= 3", "nics is 1, expected >= 2"]),
        (["disk_gib > 500"], ["disk_gib is 500, expected > 500"]),
    ],
)
def test_hardware_expectations(expect: list[str], failures: list[str]) -> None:
    assert check_hardware(expect, INV) == failures


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("memory >= 64", "unknown fact 'memory'"),
        ("memory_gib => 64", "expected '<fact> <op> <number>'"),
        ("nics >= two", "expected '<fact> <op> <number>'"),
    ],
)
def test_bad_expectations_are_named(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_expectation(text)


MAC = "52:54:00:aa:00:07"


@pytest.mark.parametrize(
    ("seen", "message"),
    [
        (
            BootSeen(MAC, 120, power_observed="on"),
            f"no DHCP request from {MAC} within 120 s after power-on (BMC says on): "
            "check the provisioning VLAN",
        ),
        (
            BootSeen(MAC, 120, has_bmc=False),
            f"no DHCP request from {MAC} within 120 s after power-on (no BMC): "
            "check the provisioning VLAN",
        ),
        (
            BootSeen(MAC, 90, dhcp=True, tftp_started="ipxe.efi", tftp_percent=38),
            "TFTP stopped at 38 % of ipxe.efi",
        ),
        (
            BootSeen(MAC, 90, dhcp=True),
            "DHCP answered but no boot script was fetched within 90 s after power-on: "
            "check HTTP reachability",
        ),
        (
            BootSeen(MAC, 90, dhcp=True, script=True, script_reason="token_address_mismatch"),
            "boot script served without an enrollment token (token_address_mismatch)",
        ),
        (
            BootSeen(MAC, 90, dhcp=True, script=True, kernel=True, agent_trouble="token expired"),
            "agent never enrolled: token expired",
        ),
        (
            BootSeen(MAC, 90, script=True, kernel=True),
            "agent never enrolled within 90 s after power-on: the kernel booted but no agent "
            "connected",
        ),
    ],
)
def test_diagnosis_names_the_most_likely_cause(seen: BootSeen, message: str) -> None:
    assert diagnose(seen) == message


def test_deprovision_steps() -> None:
    from server.rollouts import deprovision as d

    assert d.start("none", NOW, timedelta(seconds=60)) == d.Transition(
        d.DeprovisionStep.FORGETTING, state=MachineState.SUCCEEDED
    )
    wiping = d.start("quick", NOW, timedelta(seconds=60))
    assert (wiping.step, wiping.action, wiping.deadline) == (
        d.DeprovisionStep.WIPING,
        d.Action.SEND_WIPE,
        NOW + timedelta(seconds=60),
    )
    assert d.advance(FUTURE, True, None, "", NOW) is None
    assert d.advance(FUTURE, True, True, "", NOW).state is MachineState.SUCCEEDED  # type: ignore[union-attr]
    refused = d.advance(FUTURE, True, False, "wipe failed: busy", NOW)
    assert refused is not None and refused.error == "wipe failed: busy"
    late = d.advance(PAST, False, None, "", NOW)
    assert late is not None and late.error == "the agent is not connected: the disk was not wiped"
    assert d.advance(PAST, True, None, "", NOW).error == "the agent did not finish the wipe in time"  # type: ignore[union-attr]
