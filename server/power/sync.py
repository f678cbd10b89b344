"""Power sync: poll every BMC and record what it says (the rule: :mod:`server.power.observe`).

One replica at a time polls, the one holding the ``power-sync`` lease, every
``power_sync_interval`` seconds (jittered by +-20% so replicas and BMCs do not beat together).
Machines held by an operation (it reads back what it did) and machines in maintenance are not
polled. A live ``GET /machines/{key}/power`` reads one BMC the same way and records it too.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, lazyload
from starlette.concurrency import run_in_threadpool

from bmc import BmcController, BmcEndpoint, BmcResult, PowerState
from server.agents import token_wipe
from server.errors import Invalid
from server.inventory import groupcommit, singleton_lease
from server.inventory import machines as inventory
from server.inventory.db import Database
from server.inventory.models import Machine, OperationItem, utcnow
from server.inventory.secretbox import SecretBox
from server.metrics import POWER_SYNC_FAILURES
from server.power.observe import Before, Reading, observe
from server.power.writes import endpoint_of
from server.settings import ServerSettings
from server.types import EventKind, Phase

log = logging.getLogger(__name__)

SYNC_LEASE = "power-sync"
ACTOR = "power-sync"
_MACHINE_ONLY = (lazyload(Machine.nics), lazyload(Machine.label_rows))
"""Power writes touch a machine's row only: don't select its NICs and labels with it."""


@dataclass(frozen=True)
class Target:
    machine_id: str
    name: str
    endpoint: BmcEndpoint | None


def _state(text: str) -> PowerState:
    try:
        return PowerState(text)
    except ValueError:
        return PowerState.unknown


class PowerSync:
    """Reads BMCs and records the observations of this replica."""

    def __init__(
        self,
        settings: ServerSettings,
        db: Database,
        secrets: SecretBox,
        controller: BmcController,
        replica: str,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.db = db
        self.secrets = secrets
        self.controller = controller
        self.replica = replica
        self.clock = clock
        self.writes = groupcommit.calls(db)  # observations share transactions
        self.task: asyncio.Task[None] | None = None

    async def read_power(self, key: str) -> dict[str, Any]:
        target = await run_in_threadpool(self._target, key)
        if target.endpoint is None:
            raise Invalid(message=f"machine {target.name} has no BMC")
        result = await self.controller.get_power_state(target.endpoint)
        await self.writes(functools.partial(self.record, target, result))
        return {"machine": target.name, "state": result.state.value, "error": result.message}

    def _target(self, key: str) -> Target:
        with self.db.read() as s:
            m = inventory.get_machine(s, key)
            return Target(m.id, m.name, endpoint_of(m, self.secrets))

    def record(self, target: Target, result: BmcResult, s: Session) -> None:
        """Apply :func:`observe` to one read of ``target``."""
        m = s.get(Machine, target.machine_id, options=_MACHINE_ONLY)
        if m is None:
            return
        held = s.scalar(select(OperationItem.id).where(OperationItem.active_machine_id == m.id))
        before = Before(_state(m.power_observed), m.power_failures, m.phase, held is not None)
        reading = Reading(result.state, result.message)
        out = observe(before, reading, self.clock(), max_failures=self.settings.power_sync_failures)
        m.power_observed = out.observed.value
        m.power_observed_at = out.observed_at
        m.power_failures = out.failures
        m.power_error = out.error
        if out.error is None:
            token_wipe.on_power_observed(s, m)  # seen off: its enrollment token dies
        for e in out.events:
            inventory.record(
                s, actor=ACTOR, kind=EventKind(e.kind), machine=m, message=e.message, data=e.data
            )
        if out.maintenance is not None:
            m.fault_reason = out.maintenance
            m.phase = Phase.MAINTENANCE.value

    def _targets(self) -> list[Target]:
        with self.db.read() as s:
            held = select(OperationItem.active_machine_id).where(
                OperationItem.active_machine_id.is_not(None)
            )
            rows = s.scalars(
                select(Machine).where(
                    Machine.bmc_address.is_not(None),
                    Machine.phase != Phase.MAINTENANCE.value,
                    Machine.id.not_in(held),
                )
            )
            return [Target(m.id, m.name, endpoint_of(m, self.secrets)) for m in rows]

    async def sync_pass(self) -> int:
        """Poll every eligible BMC once (bounded by the controller's limits). Returns the count."""
        if not await run_in_threadpool(
            singleton_lease.acquire,
            self.db,
            SYNC_LEASE,
            self.replica,
            self.settings.power_sync_interval * 3,
        ):
            return 0
        targets = await run_in_threadpool(self._targets)

        async def poll(t: Target) -> None:
            assert t.endpoint is not None
            result = await self.controller.get_power_state(t.endpoint)
            if result.error is not None:
                POWER_SYNC_FAILURES.inc()
            await self.writes(functools.partial(self.record, t, result))

        await asyncio.gather(*(poll(t) for t in targets))
        return len(targets)

    async def forever(self) -> None:
        while True:
            try:
                await self.sync_pass()
            except Exception:  # noqa: BLE001 - the loop must survive a bad pass
                log.exception("power sync pass failed")
            jitter = random.uniform(0.8, 1.2)  # noqa: S311 - spreading load, not security
            await asyncio.sleep(self.settings.power_sync_interval * jitter)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.forever())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
