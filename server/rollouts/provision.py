"""One machine's way through provisioning (pure): its step, what was observed, what to do next.

Ironic's enroll -> inspect -> deploy and MAAS' commission -> deploy in one persisted sequence,
on the same engine as upgrades (``server.rollouts.runner``)::

    netbooting ─▶ checking ─▶ configuring ─▶ installing ─▶ booting-disk ─▶ succeeded (ready)
        │  ▲          │            │              │              │
        └──┘ retry    └────────────┴──────────────┴──────────────┴──▶ failed (step + cause)

* ``netbooting``: the machine is powered on (boot device PXE once, then on or cycle, through its
  BMC; without one an operator is asked to) and the runner waits for its agent to connect from
  a boot other than the one before. Late: power it again (bounded retries with backoff), then
  fail with the most likely cause read from what the boot plane saw (``diagnose``).
* ``checking``: the agent's inventory against the request's expectations
  (``memory_gib >= 64``, ``disks >= 2``): Ironic's inspection rules in miniature.
* ``configuring``: its rendered machine config applied (what the agent reports).
* ``installing``: an ``Install`` command: the agent writes the image to its disk (GPT, slot A,
  GRUB) and reboots. Skipped for diskless machines and requests without ``install``.
* ``booting-disk``: the agent connects again from the installed image (slot and image digest
  reported). With a BMC a machine that does not come back is power-cycled once.

Each transition is persisted before its action; a restarted server resumes from the rows alone
and never powers a machine twice for one step (the power action is part of the transition into
``netbooting``, which is recorded first).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from server.rollouts.decide import MachineState


class ProvisionStep(StrEnum):
    NETBOOTING = "netbooting"
    """Powered on to network boot; waiting for its agent to enroll and connect."""
    CHECKING = "checking"
    """Comparing the agent's inventory with the request's hardware expectations."""
    CONFIGURING = "configuring"
    """Waiting for its machine config to be applied."""
    INSTALLING = "installing"
    """The agent writes the image to its disk."""
    BOOTING_DISK = "booting-disk"
    """Rebooting from the installed disk; waiting for the agent to come back from it."""


class Action(StrEnum):
    NONE = "none"
    POWER_UP = "power-up"
    """Boot device PXE (once) and power on, or cycle when it is on (through the BMC)."""
    ASK_OPERATOR = "ask-operator"
    """No BMC: an event asks an operator to power the machine on."""
    SEND_INSTALL = "send-install"
    POWER_CYCLE = "power-cycle"
    """From disk this time: the boot plane answers an installed machine with its disk."""


@dataclass(frozen=True)
class Timeouts:
    netboot: timedelta = timedelta(seconds=300)
    """From power-on to the agent connected."""
    configure: timedelta = timedelta(seconds=300)
    install: timedelta = timedelta(seconds=1800)
    boot: timedelta = timedelta(seconds=600)
    """From the install's answer to the agent back from disk."""


@dataclass(frozen=True)
class Request:
    """What the provision asks of every machine (``rollouts.spec``)."""

    install: bool
    """Write the image to disk (false: diskless machines and netboot-only requests)."""
    expect: tuple[str, ...] = ()
    retries: int = 2
    """Power attempts after the first, when a machine does not come up."""
    retry_backoff: timedelta = timedelta(seconds=10)


@dataclass(frozen=True)
class Progress:
    step: ProvisionStep
    from_boot_id: str
    """The agent's boot id before this step's boot (a different one means it booted)."""
    target_digest: str
    deadline: datetime | None = None
    attempts: int = 0
    """Power attempts made in ``netbooting``."""
    cycled: bool = False
    """Power-cycled once in ``booting-disk``."""
    power_error: str = ""
    """The last power action failed (BMC unreachable, refused): recorded by the runner."""


@dataclass(frozen=True)
class Observation:
    connected: bool
    boot_id: str
    image_digest: str
    slot: str
    config_applied: bool
    inventory: Mapping[str, Any]
    command_ok: bool | None = None
    command_error: str = ""


@dataclass(frozen=True)
class Transition:
    step: ProvisionStep
    action: Action = Action.NONE
    state: MachineState = MachineState.ACTIVE
    deadline: datetime | None = None
    error: str = ""
    attempts: int = 0
    cycled: bool = False
    new_boot: bool = False
    """Record the boot id seen now as the one to leave (before a reboot the step expects)."""
    note: str = ""
    """Shown in the step's event (e.g. the operator prompt)."""


def start(has_bmc: bool, now: datetime, t: Timeouts) -> Transition:
    if has_bmc:
        return Transition(ProvisionStep.NETBOOTING, Action.POWER_UP, deadline=now + t.netboot)
    return Transition(
        ProvisionStep.NETBOOTING,
        Action.ASK_OPERATOR,
        deadline=now + t.netboot,
        note="no BMC: power the machine on (network boot) within "
        f"{int(t.netboot.total_seconds())} s",
    )


def advance(
    p: Progress,
    obs: Observation,
    now: datetime,
    t: Timeouts,
    req: Request,
    has_bmc: bool,
    diagnosis: Callable[[], str],
) -> Transition | None:
    """The next transition, or None to wait. ``diagnosis`` explains a stalled netboot (it reads
    the timeline, so it is called only when needed)."""
    booted = obs.connected and obs.boot_id != p.from_boot_id
    late = p.deadline is not None and now >= p.deadline
    step = p.step
    if step is ProvisionStep.NETBOOTING:
        if booted:
            return _checked(obs, now, t, req)
        if p.power_error or late:
            why = f"power action failed: {p.power_error}" if p.power_error else diagnosis()
            if has_bmc and p.attempts < req.retries:
                return Transition(
                    step,
                    Action.POWER_UP,
                    deadline=now + req.retry_backoff * (p.attempts + 1) + t.netboot,
                    attempts=p.attempts + 1,
                    error=f"attempt {p.attempts + 1}: {why}; powering it again",
                )
            return _failed(step, why)
        return None
    if step is ProvisionStep.CONFIGURING:
        if obs.connected and obs.config_applied:
            if req.install:
                return Transition(
                    ProvisionStep.INSTALLING,
                    Action.SEND_INSTALL,
                    deadline=now + t.install,
                    new_boot=True,
                )
            return Transition(step, state=MachineState.SUCCEEDED)
        if late:
            return _failed(step, "machine config not applied in time" + _err(obs))
        return None
    if step is ProvisionStep.INSTALLING:
        if obs.command_ok is False:
            return _failed(step, f"install failed: {obs.command_error}")
        if obs.command_ok or (booted and obs.slot):
            return Transition(ProvisionStep.BOOTING_DISK, deadline=now + t.boot)
        if late:
            return _failed(step, "the agent did not finish the install in time")
        return None
    if step is ProvisionStep.BOOTING_DISK:
        if booted and obs.slot:
            if obs.image_digest == p.target_digest:
                return Transition(step, state=MachineState.SUCCEEDED)
            return _failed(
                step,
                f"booted from disk with image {obs.image_digest[:12] or 'unknown'}, "
                f"not {p.target_digest[:12]}",
            )
        if late:
            if has_bmc and not p.cycled:
                return Transition(
                    step,
                    Action.POWER_CYCLE,
                    deadline=now + t.boot,
                    cycled=True,
                    error="not back from disk in time; power-cycling it once",
                )
            return _failed(step, "did not come back from its disk after the install")
        return None
    return None


def _checked(obs: Observation, now: datetime, t: Timeouts, req: Request) -> Transition:
    """Enrolled: the hardware checks run at once (the inventory came with the agent's Hello)."""
    failures = check_hardware(req.expect, obs.inventory)
    if failures:
        return _failed(ProvisionStep.CHECKING, "inventory check failed: " + "; ".join(failures))
    return Transition(ProvisionStep.CONFIGURING, deadline=now + t.configure)


def _failed(step: ProvisionStep, why: str) -> Transition:
    return Transition(step, state=MachineState.FAILED, error=why)


def _err(obs: Observation) -> str:
    return f": {obs.command_error}" if obs.command_error else ""


# --- hardware expectations -----------------------------------------------------------------------

_EXPECT = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|==|>|<)\s*([0-9]+(?:\.[0-9]+)?)\s*$")
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    ">": operator.gt,
    "<": operator.lt,
}
GIB = 1024**3


def _facts(inv: Mapping[str, Any]) -> dict[str, float]:
    disks = inv.get("disks") or []
    cpus = inv.get("cpus") or []
    return {
        "memory_gib": round(float(inv.get("memory_bytes") or 0) / GIB, 1),
        "disks": len(disks),
        "disk_gib": round(
            max((float(d.get("size_bytes") or 0) for d in disks), default=0) / GIB, 1
        ),
        "nics": len(inv.get("nics") or []),
        "cpus": len(cpus),
        "cores": sum(int(c.get("cores") or 0) for c in cpus),
        "threads": sum(int(c.get("threads") or 0) for c in cpus),
    }


FACTS = ("memory_gib", "disks", "disk_gib", "nics", "cpus", "cores", "threads")
"""What an expectation may name (``disk_gib``: the largest disk)."""


def parse_expectation(text: str) -> tuple[str, str, float]:
    """``"memory_gib >= 64"`` -> ``("memory_gib", ">=", 64.0)``; ValueError names the problem."""
    m = _EXPECT.match(text)
    if m is None:
        raise ValueError(f"{text!r}: expected '<fact> <op> <number>', e.g. 'memory_gib >= 64'")
    fact, op, value = m.group(1), m.group(2), float(m.group(3))
    if fact not in FACTS:
        raise ValueError(f"{text!r}: unknown fact {fact!r} (one of {', '.join(FACTS)})")
    return fact, op, value


def check_hardware(expect: Sequence[str], inventory: Mapping[str, Any]) -> list[str]:
    """The failed expectations, each as ``"memory_gib 32 < 64"``-style text."""
    facts = _facts(inventory)
    out = []
    for text in expect:
        fact, op, want = parse_expectation(text)
        have = facts[fact]
        if not _OPS[op](have, want):
            out.append(f"{fact} is {_num(have)}, expected {op} {_num(want)}")
    return out


def _num(v: float) -> str:
    return str(int(v)) if v == int(v) else str(v)


# --- why a netboot stalled -----------------------------------------------------------------------


@dataclass(frozen=True)
class BootSeen:
    """What the boot plane and the agents reported for the machine since it was powered on."""

    mac: str
    waited_s: int
    dhcp: bool = False
    """A DHCP DISCOVER/REQUEST from one of its MACs."""
    tftp_started: str = ""
    """The file of a TFTP read that began (and did not complete)."""
    tftp_percent: int | None = None
    tftp_done: bool = False
    script: bool = False
    script_reason: str = ""
    """Why its script carried no enrollment token (``token_address_mismatch``...), if so."""
    kernel: bool = False
    agent_trouble: str = ""
    """The latest problem its agent reported (``enrollment denied``, a clock skew)."""
    power_observed: str = "unknown"
    has_bmc: bool = True


def diagnose(seen: BootSeen) -> str:
    """The most likely cause of a netboot that did not end with an enrolled agent."""
    after = f"within {seen.waited_s} s after power-on"
    if seen.agent_trouble:
        return f"agent never enrolled: {seen.agent_trouble}"
    if not seen.dhcp and not seen.script:
        power = f"BMC says {seen.power_observed}" if seen.has_bmc else "no BMC"
        return f"no DHCP request from {seen.mac} {after} ({power}): check the provisioning VLAN"
    if seen.tftp_started and not seen.tftp_done and not seen.script:
        pct = f" at {seen.tftp_percent} %" if seen.tftp_percent is not None else ""
        return f"TFTP stopped{pct} of {seen.tftp_started}"
    if not seen.script:
        return f"DHCP answered but no boot script was fetched {after}: check HTTP reachability"
    if seen.script_reason:
        return f"boot script served without an enrollment token ({seen.script_reason})"
    if not seen.kernel:
        return f"boot script fetched but the kernel was not downloaded {after}"
    return f"agent never enrolled {after}: the kernel booted but no agent connected"
