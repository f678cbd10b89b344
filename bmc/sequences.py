"""The verified action sequences: what a power read, a power action and a boot override do.

Part of the power policy (:mod:`bmc.actions`; Redfish DSP0266, IPMI 2.0 section 28.3). Each
sequence runs inside one :class:`~bmc.operation.Operation` (which paces, retries and polls)
and returns a :class:`~bmc.operation.BmcResult`:

- **Read first, act only if needed.** ``on``/``off``/``soft-off`` on a host already in the
  target state succeed without a command (idempotent reconcile loops). ``cycle`` and ``reset``
  of a host that is off power it on (DSP0266 and IPMI 2.0 section 28.3 leave reset-while-off
  undefined; ironic does the same).
- **A fatal answer to ``on``/``off`` is re-checked by a read**: some BMCs refuse "on" when on
  (IPMI cc D5h, Redfish 400/409), and "already on" is success.
- **Verify every write by reading back** until the target state is seen or the settle timeout
  passes (:class:`~bmc.errors.BmcVerifyTimeout` otherwise). A cycle or reset is verified by the
  host ending on, read no sooner than half a poll interval after the command (before the BMC
  acts, the host still reads on); a boot override by the device reading back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bmc.driver import PowerDriver
from bmc.errors import BmcError, BmcFatalError, BmcVerifyTimeout
from bmc.operation import BmcResult, Operation
from bmc.types import BootDevice, PowerAction, PowerState

# The policy logs under one name, as docs/power.md says ("logged at DEBUG by bmc.actions").
LOG = logging.getLogger("bmc.actions")

IDEMPOTENT = (PowerAction.on, PowerAction.off, PowerAction.soft_off)
"""Actions whose target state, once reached, makes the command unnecessary."""


def read_power(op: Operation) -> BmcResult:
    """Read the power state."""
    state = op.call(lambda d: d.get_power_state())
    return BmcResult(op.endpoint.key, op.name, state, op.attempts, 0.0)


def power(op: Operation, action: PowerAction, settle: float) -> BmcResult:
    """Carry out ``action`` and wait until the power state reads back as its target."""
    before = op.call(lambda d: d.get_power_state())
    if action in IDEMPOTENT and before == action.target:
        return BmcResult(op.endpoint.key, op.name, before, op.attempts, 0.0)
    already = _command(op, action, before)
    if already is not None:
        return BmcResult(op.endpoint.key, op.name, already, op.attempts, 0.0)
    # A host being cycled or reset reads "on" until the BMC acts: a read-back at once proves
    # nothing, so the first one waits half a poll interval.
    restart = action in (PowerAction.cycle, PowerAction.reset) and before != PowerState.off
    return _verify_power(op, action, settle, immediate=not restart)


def _command(op: Operation, action: PowerAction, before: PowerState) -> PowerState | None:
    """Send the command; ``None``, or the target state if a refused on/off was already there."""
    target = action.target
    try:
        op.call(command_for(action, before))
    except BmcFatalError as exc:
        if action not in IDEMPOTENT:
            raise
        # Some BMCs refuse "on" when on (IPMI cc D5h, Redfish 400/409): check.
        try:
            now = op.once(lambda d: d.get_power_state())
        except BmcError:
            raise exc from None
        if now != target:
            raise
        LOG.debug(
            "bmc already in target bmc=%s action=%s error=%s",
            op.endpoint.key,
            action.value,
            exc,
        )
        return now
    return None


def _verify_power(op: Operation, action: PowerAction, settle: float, immediate: bool) -> BmcResult:
    target = action.target
    state, settled = op.wait_for(
        lambda d: d.get_power_state(), lambda s: s == target, settle, immediate
    )
    return verified(op, action, settle, state, settled)


def verified(
    op: Operation, action: PowerAction, settle: float, state: PowerState | None, settled: bool
) -> BmcResult:
    """The result of a power command whose read-back ended on ``state``."""
    target = action.target
    final = state if state is not None else PowerState.unknown
    error = (
        None
        if settled
        else BmcVerifyTimeout(
            bmc=op.endpoint.key,
            action=action.value,
            expected=target.value,
            seconds=settle,
            observed=final.value,
        )
    )
    return BmcResult(
        op.endpoint.key,
        op.name,
        final,
        op.attempts,
        0.0,
        changed=True,
        polls=op.polls,
        error=error,
    )


def set_boot(
    op: Operation, device: BootDevice, persistent: bool, uefi: bool, settle: float
) -> BmcResult:
    """Set the boot override and read it back (the device must match)."""
    op.call(lambda d: d.set_boot_device(device, persistent, uefi))
    boot, settled = op.wait_for(
        lambda d: d.get_boot_device(),
        lambda b: b is not None and b.device == device,
        settle,
    )
    error = (
        None
        if settled
        else BmcVerifyTimeout(
            bmc=op.endpoint.key,
            action=f"boot {device.value}",
            expected=device.value,
            seconds=settle,
            observed=str(boot.device if boot else None),
        )
    )
    if boot is not None and (
        boot.persistent not in (None, persistent) or boot.uefi not in (None, uefi)
    ):
        LOG.debug(
            "bmc boot flags differ on read-back bmc=%s wanted=%s/%s read=%s/%s",
            op.endpoint.key,
            persistent,
            uefi,
            boot.persistent,
            boot.uefi,
        )
    return BmcResult(
        op.endpoint.key,
        op.name,
        PowerState.unknown,
        op.attempts,
        0.0,
        changed=True,
        polls=op.polls,
        boot=boot,
        error=error,
    )


def command_for(action: PowerAction, before: PowerState) -> Callable[[PowerDriver], None]:
    """The driver call for ``action`` on a host whose power read ``before``."""
    name, args = command(action, before)
    return lambda d: getattr(d, name)(*args)


def command(action: PowerAction, before: PowerState) -> tuple[str, tuple[bool, ...]]:
    """The driver method (and its arguments) that carries out ``action`` on a host whose power
    read ``before``: a cycle or reset of a host that is off powers it on."""
    if action == PowerAction.on or (before == PowerState.off and action not in IDEMPOTENT):
        return "power_on", ()
    if action in (PowerAction.off, PowerAction.soft_off):
        return "power_off", (action == PowerAction.soft_off,)
    if action == PowerAction.cycle:
        return "power_cycle", ()
    return "reset", ()
