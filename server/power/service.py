"""The power plane inside the server, as one object for the composition root and the API.

:class:`PowerService` is a thin facade over the parts, each in its own module:

- :mod:`server.power.operations`: accepting and running power / boot-device operations;
- :mod:`server.power.writes`: their batched writes (items, machines, events);
- :mod:`server.power.sync` and :mod:`server.power.observe`: power sync and its rule (pure);
- :mod:`server.power.addresses`: which BMC addresses and ports are accepted;
- :mod:`server.inventory.replicas`: this replica's liveness lease (operations of a replica whose
  lease lapsed are failed by the others).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.concurrency import run_in_threadpool

from bmc import BmcController, PowerPolicy
from server.inventory.db import Database
from server.inventory.replicas import ReplicaLiveness
from server.inventory.secretbox import SecretBox
from server.inventory.selectors import Requirement
from server.metrics import observe_bmc
from server.power.addresses import checked_bmc_address, net_policy
from server.power.kinds import OperationKind
from server.power.listing import operation_view
from server.power.operations import Operations
from server.power.sync import PowerSync
from server.power.writes import endpoint_of
from server.settings import ServerSettings

__all__ = [
    "OperationKind",
    "PowerService",
    "checked_bmc_address",
    "endpoint_of",
    "net_policy",
    "operation_view",
]


def controller_for(settings: ServerSettings) -> BmcController:
    return BmcController(
        policy=PowerPolicy(
            max_concurrency=settings.bmc_max_concurrency,
            min_interval=settings.bmc_min_interval,
            settle_timeout=settings.bmc_settle_timeout,
            poll_interval=settings.bmc_poll_interval,
            session_idle=settings.bmc_session_idle,
            max_sessions=settings.bmc_session_max,
            deadline=settings.bmc_settle_timeout + 30,
        ),
        netpolicy=net_policy(settings),
    )


class PowerService:
    """Owns the BMC controller, this replica's operations, sync loop and liveness."""

    def __init__(
        self,
        settings: ServerSettings,
        db: Database,
        secrets: SecretBox,
        controller: BmcController | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.controller = controller or controller_for(settings)
        if observe_bmc not in self.controller.observers:
            self.controller.observers.append(observe_bmc)
        self.liveness = ReplicaLiveness(db)
        self.replica = self.liveness.replica
        self.operations = Operations(settings, db, secrets, self.controller, self.replica)
        self.sync = PowerSync(settings, db, secrets, self.controller, self.replica)
        self.liveness.on_tick.append(self.operations.reap_abandoned)

    def submit(
        self,
        *,
        kind: OperationKind,
        action: str,
        params: dict[str, Any],
        actor: str,
        keys: list[str] | None = None,
        selector: tuple[Requirement, ...] | None = None,
    ) -> str:
        return self.operations.submit(
            kind=kind, action=action, params=params, actor=actor, keys=keys, selector=selector
        )

    def start(self, op_id: str) -> None:
        self.operations.start(op_id)

    async def run(self, op_id: str) -> None:
        await self.operations.run(op_id)

    def reap_abandoned(self, *, own: bool = False) -> int:
        return self.operations.reap_abandoned(own=own)

    async def read_power(self, key: str) -> dict[str, Any]:
        return await self.sync.read_power(key)

    async def sync_pass(self) -> int:
        return await self.sync.sync_pass()

    async def startup(self) -> None:
        await self.liveness.start()  # renews before any operation can be accepted, then reaps
        if self.settings.power_sync_enabled:
            self.sync.start()

    async def shutdown(self) -> None:
        await self.sync.stop()
        tasks = list(self.operations.tasks)
        for task in tasks:
            task.cancel()
        await self.liveness.stop_renewing()
        await asyncio.gather(*tasks, return_exceptions=True)
        # What was cut off is over: free its machines now, not when another replica notices.
        await run_in_threadpool(self.reap_abandoned, own=True)
        await self.liveness.release()
        await run_in_threadpool(self.controller.close)
