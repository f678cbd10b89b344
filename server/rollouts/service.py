"""The rollout runner as ``bronze serve`` starts it: its power-cycle action goes through the
power plane (an ordinary power operation, visible in ``/api/v1/operations``)."""

from __future__ import annotations

import asyncio
import logging

from starlette.concurrency import run_in_threadpool

from server.errors import ApiError
from server.inventory.db import Database
from server.inventory.secretbox import SecretBox
from server.power.kinds import OperationKind
from server.power.service import PowerService
from server.rollouts.runner import ACTOR, RolloutRunner, RunnerConfig
from server.settings import ServerSettings

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
        self._power = power
        self.runner = RolloutRunner(
            db,
            power.replica,
            RunnerConfig(asset_base_url=asset_base_url, interval=settings.rollout_interval),
            secrets,
            self._cycle,
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

    def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.get_running_loop().create_task(self.runner.run(self._stop))

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
