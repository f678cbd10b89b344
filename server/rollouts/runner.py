"""The rollout runner: one replica at a time (a database lease) walks every unfinished rollout.

Each pass, in one write transaction per rollout, through the pass of the rollout's kind
(``upgrading.UpgradePass``, ``provisioning.ProvisionPass``, ``deprovisioning.DeprovisionPass``):

1. every active machine is observed (its agent's last report) and advanced as far as that
   report allows (``server.rollouts.upgrade.advance``, one transition after another);
2. the rollout's next actions are decided (``server.rollouts.decide.next_actions``) and newly
   started machines get their first step;
3. commands for the agents (Upgrade, MarkGood, Reboot) are written to the agents' outbox
   (``agent_pending_commands``) *in the same transaction* as the step that needs them: a command
   exists exactly when its step is recorded, whatever crashes when. The session hub of whichever
   replica holds the agent's session delivers it (it polls that table), and the agent journals
   command ids, so a command is applied at most once.

Side effects that cannot join the transaction (webhook calls, BMC power cycles) run after the
commit. A hook that was being called when the server died is called again (hooks must be
idempotent, as drain and uncordon are); a power cycle is requested once per machine and upgrade.

After ``kill -9`` (or when another replica takes the lease) the next pass starts from the rows
alone: machines in flight are re-probed through their agents' reports before anything is done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from server.inventory import singleton_lease
from server.inventory.db import Database
from server.inventory.models import Machine, utcnow
from server.inventory.secretbox import SecretBox
from server.rollouts import deprovisioning, provisioning, store
from server.rollouts.decide import MachineState, RolloutStatus
from server.rollouts.effects import Effects
from server.rollouts.hooks import call_hook
from server.rollouts.models import Rollout, RolloutMachine
from server.rollouts.upgrade import UpgradeStep
from server.rollouts.upgrading import UpgradePass

log = logging.getLogger(__name__)

LEASE = "rollouts"


@dataclass
class RunnerConfig:
    asset_base_url: str
    """Where agents download image files (``<base>/assets/NAME``)."""
    interval: float = 0.5
    coalesce: float = 0.02
    """After a wake (:meth:`RolloutRunner.wake`), how long to gather more reports first."""
    lease_ttl: float = 15.0
    write_timeout: timedelta = timedelta(seconds=300)
    recover_timeout: timedelta = timedelta(seconds=600)


class RolloutRunner:
    def __init__(
        self,
        db: Database,
        replica: str,
        config: RunnerConfig,
        secrets: SecretBox,
        power_cycle: Callable[[str], Awaitable[None]],
        clock: Callable[[], datetime] = utcnow,
        deliver: Callable[[], Awaitable[object]] | None = None,
        power_up: Callable[[str, str], Awaitable[str]] | None = None,
    ) -> None:
        self.db, self.replica, self.config = db, replica, config
        self.secrets, self.power_cycle, self.clock = secrets, power_cycle, clock
        self.deliver = deliver
        self.power_up = power_up
        """Provisioning: boot device PXE once, then power on (``up``) or ``cycle``; returns ""
        or why it failed."""
        """Asks this replica's session hub to send saved commands now (instead of at its next
        poll); agents held by other replicas get theirs at those replicas' polls."""
        self._hooks_in_flight: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._busy = False
        """The last pass found an unfinished rollout (only then do wakes run passes)."""
        self._reported: set[str] = set()
        """Machines whose agents reported since the last pass (a woken pass observes those)."""
        self._full_at = 0.0
        """Monotonic time of the next full pass (every machine in flight observed)."""
        self._renew_at = 0.0

    def wake(self, machine_id: str) -> None:
        """Something a pass reads changed (the machine's agent said hello, answered a command):
        run the next pass now instead of at the end of the interval, observing the machines
        that reported. Called on the event loop by this replica's session hub; agents held by
        other replicas are seen by the full pass at the interval."""
        if self._busy:
            self._reported.add(machine_id)
            self._wake.set()

    async def _idle(self, stop: asyncio.Event) -> None:
        """Until ``stop``, a wake, or the interval. After a wake, ``coalesce`` more seconds, so
        the reports of a batch's machines arriving together share one pass."""
        waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())}
        try:
            done, _ = await asyncio.wait(
                waits, timeout=self.config.interval, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for w in waits:
                w.cancel()
        if done and not stop.is_set() and self.config.coalesce > 0:
            try:
                await asyncio.wait_for(stop.wait(), self.config.coalesce)
            except TimeoutError:
                pass

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()  # reports arriving during this pass wake the next one
            try:
                if await self._hold_lease():
                    await self.tick()
            except Exception:
                self._renew_at = 0.0
                log.exception("rollout pass failed")
            await self._idle(stop)
        for t in list(self._tasks):
            t.cancel()
        await run_in_threadpool(singleton_lease.release, self.db, LEASE, self.replica)

    async def _hold_lease(self) -> bool:
        """Take or renew the lease; renewed at most every third of its TTL (a write each pass
        would cost as much as the pass when wakes make passes frequent)."""
        asked = time.monotonic()
        if asked < self._renew_at:
            return True
        held = await run_in_threadpool(
            singleton_lease.acquire, self.db, LEASE, self.replica, self.config.lease_ttl
        )
        self._renew_at = asked + self.config.lease_ttl / 3 if held else 0.0
        return held

    async def tick(self) -> None:
        """One pass over every unfinished rollout: full at the interval (and when rollouts
        appear), else over the machines that reported since the last pass."""
        ids = await run_in_threadpool(self._unfinished)
        full = not self._busy or time.monotonic() >= self._full_at
        only, self._reported = (None if full else self._reported), set()
        if full:
            self._full_at = time.monotonic() + self.config.interval
        self._busy = bool(ids)
        for rid in ids:
            effects = await run_in_threadpool(self._pass, rid, only)
            self._carry_out(effects)
            if effects.commands and self.deliver is not None:
                await self.deliver()

    def _unfinished(self) -> list[str]:
        terminal = [s.value for s in RolloutStatus if s.terminal]
        with self.db.read() as s:
            return list(
                s.scalars(
                    select(Rollout.id)
                    .where(Rollout.status.not_in(terminal))
                    .order_by(Rollout.created_at)
                )
            )

    # --- one rollout, one transaction ------------------------------------------------------------

    def _pass(self, rollout_id: str, only: set[str] | None = None) -> Effects:
        """One transaction over the rollout. ``only``: the machines whose agents reported
        since the last pass; an upgrade then observes just those (the others' observations did
        not change), and a full pass (``None``) every interval catches deadlines."""
        effects = Effects()
        now = self.clock()
        with self.db.write() as s:
            r = store.get(s, rollout_id)
            if r.kind == provisioning.KIND:
                provisioning.ProvisionPass(
                    s, r, now, effects, self.config.asset_base_url, only
                ).run()
            elif r.kind == deprovisioning.DEPROVISION:
                deprovisioning.DeprovisionPass(s, r, now, effects).run()
            else:
                self._upgrade_pass(s, r, now, effects).run(only)
        return effects

    def _upgrade_pass(self, s: Session, r: Rollout, now: datetime, effects: Effects) -> UpgradePass:
        c = self.config
        return UpgradePass(s, r, now, effects, c.asset_base_url, c.write_timeout, c.recover_timeout)

    # --- side effects after commit --------------------------------------------------------------

    def _carry_out(self, effects: Effects) -> None:
        for rid, mid, hook, payload in effects.hooks:
            if (rid, mid) not in self._hooks_in_flight:  # a pass asks again while it runs
                self._hooks_in_flight.add((rid, mid))
                self._spawn(self._call_hook(rid, mid, hook, payload))
        for mid in effects.cycles:
            self._spawn(self.power_cycle(mid))
        for rid, mid, what, delay, step, attempt in effects.power:
            self._spawn(self._power(rid, mid, what, delay, step, attempt))

    async def _power(
        self, rid: str, mid: str, what: str, delay: float, step: str, attempt: int
    ) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        if self.power_up is None:
            error = "no power plane in this server"
        else:
            try:
                error = await self.power_up(mid, what)
            except Exception as exc:  # noqa: BLE001 - recorded as the step's power failure
                log.exception("power action failed machine=%s", mid)
                error = f"{type(exc).__name__}: {exc}"
        await run_in_threadpool(self._power_done, rid, mid, step, attempt, error)
        self.wake(mid)  # a failed power action is acted on at the next pass, not the full one

    def _power_done(self, rid: str, mid: str, step: str, attempt: int, error: str) -> None:
        with self.db.write() as s:
            provisioning.power_done(s, rid, mid, step, attempt, error, self.clock())

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call_hook(
        self, rid: str, mid: str, hook: dict[str, Any], payload: dict[str, Any]
    ) -> None:
        try:
            ok, error = await call_hook(hook, payload, self.secrets)
            effects = await run_in_threadpool(self._hook_done, rid, mid, ok, error)
        finally:
            self._hooks_in_flight.discard((rid, mid))
        self._carry_out(effects)
        if effects.commands and self.deliver is not None:  # the upgrade after a pre-hook
            await self.deliver()
        self.wake(mid)  # a finished machine may let the next one start

    def _hook_done(self, rid: str, mid: str, ok: bool, error: str) -> Effects:
        effects = Effects()
        with self.db.write() as s:
            r = store.get(s, rid)
            row = s.get(RolloutMachine, (rid, mid))
            if row is None or row.state != MachineState.ACTIVE:
                return effects
            if row.step not in (UpgradeStep.PRE_HOOK.value, UpgradeStep.POST_HOOK.value):
                return effects
            m = s.get(Machine, mid)
            assert m is not None
            self._upgrade_pass(s, r, self.clock(), effects).hook_answered(row, m, ok, error)
        return effects
