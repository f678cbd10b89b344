"""The rollout runner as ``bronze serve`` starts it: its power-cycle action goes through the
power plane (an ordinary power operation, visible in ``/api/v1/operations``)."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from bmc.errors import BmcUnsupportedError
from server.errors import ApiError
from server.inventory.db import Database
from server.inventory.models import Machine, OperationItem
from server.inventory.secretbox import SecretBox
from server.power.kinds import OperationKind
from server.power.service import PowerService
from server.rollouts.runner import RolloutRunner, RunnerConfig
from server.rollouts.upgrading import ACTOR
from server.settings import ServerSettings
from server.types import OpStatus

log = logging.getLogger(__name__)


class RolloutService:
    def __init__(
        self,
        settings: ServerSettings,
        db: Database,
        secrets: SecretBox,
        power: PowerService,
        asset_base_url: str,
    ) -> None:
        self._power, self._db = power, db
        self.runner = RolloutRunner(
            db,
            power.replica,
            RunnerConfig(asset_base_url=asset_base_url, interval=settings.rollout_interval),
            secrets,
            self._cycle,
            power_up=self._power_up,
        )
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _cycle(self, machine_id: str) -> None:
        """The server as watchdog: a power cycle through the machine's BMC."""
        error = await self._cycle_or_off_on(machine_id, "rollout watchdog")
        if error:
            log.warning("watchdog power cycle failed machine=%s: %s", machine_id, error)

    async def _power_up(self, machine_id: str, what: str) -> str:
        """Provisioning: boot device PXE (once), then power on (``up``: a machine already on is
        cycled) or ``cycle``. Ordinary power operations (``/api/v1/operations``). Returns ""
        or what failed."""
        params = {"reason": "provisioning"}
        error = await self._run(
            machine_id, OperationKind.BOOT_DEVICE, "pxe", {**params, "persistent": False}
        )
        if error:
            return error
        if what == "up" and await run_in_threadpool(self._observed, machine_id) != "on":
            return await self._run(machine_id, OperationKind.POWER, "on", params)
        return await self._cycle_or_off_on(machine_id, "provisioning")

    async def _cycle_or_off_on(self, machine_id: str, reason: str) -> str:
        """A power cycle; a BMC without one (IPMI's chassis power cycle is optional: VirtualBMC
        answers "invalid command") gets off, then on, as Ironic's IPMI reboot does."""
        params = {"reason": reason}
        error, kind = await self._attempt(machine_id, OperationKind.POWER, "cycle", params)
        if kind != BmcUnsupportedError.__name__:
            return error
        log.info("BMC has no power cycle machine=%s: off, then on", machine_id)
        return await self._run(machine_id, OperationKind.POWER, "off", params) or await self._run(
            machine_id, OperationKind.POWER, "on", params
        )

    async def _run(
        self, machine_id: str, kind: OperationKind, action: str, params: dict[str, Any]
    ) -> str:
        """One power operation, to its end; "" or what failed."""
        return (await self._attempt(machine_id, kind, action, params))[0]

    async def _attempt(
        self, machine_id: str, kind: OperationKind, action: str, params: dict[str, Any]
    ) -> tuple[str, str]:
        """One power operation, to its end: ("", "") or what failed and the BMC error's type
        (``error_type`` of the item's result; "" when the operation was refused)."""
        try:
            op = await run_in_threadpool(
                functools.partial(
                    self._power.submit,
                    kind=kind,
                    action=action,
                    params=params,
                    actor=ACTOR,
                    keys=[machine_id],
                )
            )
        except ApiError as exc:  # another operation holds the machine, no BMC
            return f"{kind.value} {action} refused: {exc}", ""
        await self._power.run(op)
        error, error_type = await run_in_threadpool(self._item_error, op)
        return (f"{kind.value} {action}: {error}" if error else ""), error_type

    def _observed(self, machine_id: str) -> str:
        with self._db.read() as s:
            m = s.get(Machine, machine_id)
            return m.power_observed if m is not None else "unknown"

    def _item_error(self, op_id: str) -> tuple[str, str]:
        with self._db.read() as s:
            item = s.scalars(
                select(OperationItem).where(OperationItem.operation_id == op_id)
            ).first()
            if item is None or item.status == OpStatus.SUCCEEDED.value:
                return "", ""
            return item.error or item.status, (item.result or {}).get("error_type", "")

    def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.get_running_loop().create_task(self.runner.run(self._stop))

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
