"""The rollout runner as ``bronze serve`` starts it: its power-cycle action goes through the
power plane (an ordinary power operation, visible in ``/api/v1/operations``)."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from server.errors import ApiError
from server.inventory.db import Database
from server.inventory.models import Machine, OperationItem
from server.inventory.secretbox import SecretBox
from server.power.kinds import OperationKind
from server.power.service import PowerService
from server.rollouts.runner import ACTOR, RolloutRunner, RunnerConfig
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
        try:
            op = await run_in_threadpool(
                lambda: self._power.submit(
                    kind=OperationKind.POWER,
                    action="cycle",
                    params={"reason": "rollout watchdog"},
                    actor=ACTOR,
                    keys=[machine_id],
                )
            )
        except ApiError as exc:  # e.g. another operation holds the machine
            log.warning("watchdog power cycle refused machine=%s: %s", machine_id, exc)
            return
        self._power.start(op)

    async def _power_up(self, machine_id: str, what: str) -> str:
        """Provisioning: boot device PXE (once), then power on (``up``: a machine already on is
        cycled) or ``cycle``. Two ordinary power operations (``/api/v1/operations``). Returns ""
        or what failed."""
        if what == "up":
            observed = await run_in_threadpool(self._observed, machine_id)
            action = "cycle" if observed == "on" else "on"
        else:
            action = "cycle"
        steps: list[tuple[OperationKind, str, dict[str, Any]]] = [
            (OperationKind.BOOT_DEVICE, "pxe", {"persistent": False, "reason": "provisioning"}),
            (OperationKind.POWER, action, {"reason": "provisioning"}),
        ]
        for kind, act, params in steps:
            try:
                op = await run_in_threadpool(
                    functools.partial(
                        self._power.submit,
                        kind=kind,
                        action=act,
                        params=params,
                        actor=ACTOR,
                        keys=[machine_id],
                    )
                )
            except ApiError as exc:  # another operation holds the machine, no BMC
                return f"{kind.value} {act} refused: {exc}"
            await self._power.run(op)
            error = await run_in_threadpool(self._item_error, op)
            if error:
                return f"{kind.value} {act}: {error}"
        return ""

    def _observed(self, machine_id: str) -> str:
        with self._db.read() as s:
            m = s.get(Machine, machine_id)
            return m.power_observed if m is not None else "unknown"

    def _item_error(self, op_id: str) -> str:
        with self._db.read() as s:
            item = s.scalars(
                select(OperationItem).where(OperationItem.operation_id == op_id)
            ).first()
            if item is None or item.status == OpStatus.SUCCEEDED.value:
                return ""
            return item.error or item.status

    def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.get_running_loop().create_task(self.runner.run(self._stop))

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
