"""Operations: accepted power and boot-device requests, and their runner.

An operation is accepted with 202 and runs in the background on the replica that accepted it;
its state lives in the database (``operations`` / ``operation_items``), so any replica answers
``GET /api/v1/operations/{id}``. A machine can be held by one operation at a time: the unique
``active_machine_id`` column makes the second request fail with 409, on every replica. Each
operation names the replica running it; when that replica's liveness lease lapses
(:mod:`server.inventory.replicas`) another replica fails what it held, which frees its machines
(:meth:`Operations.reap_abandoned`).

Items run at most ``max_parallel`` at once, their starts at least ``stagger_ms`` apart; their
starts and results are written in batches (:mod:`server.power.writes`), and an item gives its
place back to the next one as soon as its BMC work is done, before its result is committed (the
operation ends after every result is).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from bmc import BmcController, BmcEndpoint, BmcError, BmcResult, BootDevice, PowerAction
from server.errors import Conflict, Invalid
from server.inventory import machines as inventory
from server.inventory import replicas
from server.inventory.db import Database
from server.inventory.groupcommit import GroupCommit
from server.inventory.models import Event, Machine, Operation, OperationItem, utcnow
from server.inventory.secretbox import SecretBox
from server.inventory.selectors import Requirement
from server.power import writes
from server.power.kinds import OperationKind
from server.settings import ServerSettings
from server.types import EventKind, OpStatus

log = logging.getLogger(__name__)

STALE_AFTER = timedelta(minutes=30)
"""Operations from before migration 0008 (no replica recorded) held longer are abandoned."""
_UNFINISHED = (OpStatus.QUEUED.value, OpStatus.RUNNING.value)


class Operations:
    """Accepts operations, runs them on this replica, frees what dead replicas held."""

    def __init__(
        self,
        settings: ServerSettings,
        db: Database,
        secrets: SecretBox,
        controller: BmcController,
        replica: str,
    ) -> None:
        self.settings = settings
        self.db = db
        self.controller = controller
        self.replica = replica
        self.starts: GroupCommit[writes.Start, BmcEndpoint | None] = GroupCommit(
            db, lambda s, xs: writes.items_start(s, xs, secrets)
        )
        """Item starts: on each item's way to its BMC, so in transactions of their own (with the
        results, a start would wait for every result of its batch to be written too)."""
        self.dones: GroupCommit[writes.Done, None] = GroupCommit(db, writes.items_done)
        self.tasks: set[asyncio.Task[Any]] = set()

    # --- submitting -------------------------------------------------------------------------------

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
        """Create an operation holding every selected machine; 409 if one is already held."""
        kind = OperationKind(kind)
        ids: list[str] = []
        try:
            with self.db.write() as s:
                machines = self._select(s, keys, selector)
                ids = [m.id for m in machines]
                op = Operation(
                    id=str(uuid.uuid4()),
                    kind=kind.value,
                    action=action,
                    params=params,
                    status=OpStatus.QUEUED.value,
                    requested_by=actor,
                    created_at=utcnow(),
                    replica=self.replica,
                )
                s.add(op)
                s.flush()
                s.execute(
                    OperationItem.__table__.insert(),  # type: ignore[attr-defined]
                    [
                        {
                            "operation_id": op.id,
                            "machine_id": m.id,
                            "machine_name": m.name,
                            "active_machine_id": m.id,
                            "status": OpStatus.QUEUED.value,
                            "result": {},
                        }
                        for m in machines
                    ],
                )
                self._record_requests(s, op, machines, actor)
                return op.id
        except IntegrityError:
            raise Conflict(
                message="another operation is already running on " + self._busy_names(ids)
            ) from None

    def _select(
        self, s: Any, keys: list[str] | None, selector: tuple[Requirement, ...] | None
    ) -> list[Any]:
        # (id, name, bmc_address) rows: a bulk operation selects thousands of machines and ORM
        # objects (with their NICs and labels) cost ~0.1 ms each, holding the GIL.
        wanted = select(Machine.id, Machine.name, Machine.bmc_address)
        if keys is not None:  # ids or names
            rows = list(s.execute(wanted.where(or_(Machine.id.in_(keys), Machine.name.in_(keys)))))
            by_key = {r.id: r for r in rows} | {r.name: r for r in rows}
            machines = [by_key.get(k) or inventory.get_machine(s, k) for k in keys]  # 404
        else:
            clause = inventory.selector_clause(selector or ())
            machines = list(s.execute(wanted.where(clause).order_by(Machine.name)))
        if not machines:
            raise Invalid(message="the selector matches no machines", details={"field": "selector"})
        no_bmc = [m.name for m in machines if m.bmc_address is None]
        if no_bmc:
            raise Invalid(
                message=f"machines without a BMC: {', '.join(no_bmc[:20])}",
                details={"machines": no_bmc},
            )
        return machines

    @staticmethod
    def _record_requests(s: Any, op: Operation, machines: list[Any], actor: str) -> None:
        """A ``*.requested`` event per machine, and the request on the machine itself."""
        now = utcnow()
        s.execute(
            Event.__table__.insert(),  # type: ignore[attr-defined]
            [
                {
                    "actor": actor,
                    "kind": EventKind(f"{op.kind}.requested").value,
                    "machine_id": m.id,
                    "machine_name": m.name,
                    "message": f"{op.kind} {op.action} requested",
                    "data": inventory.with_request_id({"operation": op.id, **op.params}),
                    "created_at": now,
                }
                for m in machines
            ],
        )
        t = Machine.__table__
        request = writes.request_view(op, OpStatus.QUEUED)
        s.execute(
            t.update()  # type: ignore[attr-defined]
            .where(t.c.id == bindparam("b_id"))  # type: ignore[attr-defined]
            .values(power_request=request, revision=t.c.revision + 1),  # type: ignore[attr-defined]
            [{"b_id": m.id} for m in machines],
        )

    def _busy_names(self, ids: list[str]) -> str:
        with self.db.read() as s:
            names = s.scalars(
                select(OperationItem.machine_name).where(OperationItem.active_machine_id.in_(ids))
            )
            return ", ".join(sorted(set(names))) or "one of these machines"

    def start(self, op_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self.run(op_id))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- running ----------------------------------------------------------------------------------

    async def run(self, op_id: str) -> None:
        op = await run_in_threadpool(self._begin, op_id)
        max_parallel = int(op.params.get("max_parallel") or self.settings.bmc_max_concurrency)
        stagger = float(op.params.get("stagger_ms") or 0) / 1000
        gate = asyncio.Semaphore(max_parallel)
        loop = asyncio.get_running_loop()
        starts = asyncio.Lock()
        next_start = loop.time()

        async def one(item: OperationItem) -> bool:
            nonlocal next_start
            async with gate:
                async with starts:  # consecutive starts are at least `stagger` apart
                    delay = next_start - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_start = loop.time() + stagger
                done = await self._run_item(op, item)
            # Committing the result is not BMC work: the next item starts meanwhile.
            await self.dones(done)
            return done.error is None

        try:
            oks = await asyncio.gather(*(one(item) for item in op.items))
        except Exception as exc:  # noqa: BLE001 - record, never lose an operation
            log.exception("operation crashed op=%s", op_id)
            await run_in_threadpool(self._finish, op_id, f"internal error: {type(exc).__name__}")
            return
        failed = len(oks) - sum(oks)
        await run_in_threadpool(
            self._finish, op_id, f"{failed} of {len(oks)} machines failed" if failed else None
        )

    def _begin(self, op_id: str) -> Operation:
        with self.db.write() as s:
            op = s.get_one(Operation, op_id)
            op.status = OpStatus.RUNNING.value
            op.started_at = utcnow()
            return op

    def _finish(self, op_id: str, error: str | None) -> None:
        with self.db.write() as s:
            s.execute(
                update(Operation)
                .where(Operation.id == op_id)
                .values(
                    status=(OpStatus.FAILED if error else OpStatus.SUCCEEDED).value,
                    error=error,
                    finished_at=utcnow(),
                )
                .execution_options(synchronize_session=False)
            )
            held = (
                OperationItem.operation_id == op_id,
                OperationItem.active_machine_id.is_not(None),
            )
            s.execute(
                update(OperationItem)  # nothing may stay held
                .where(*held, OperationItem.status.in_(_UNFINISHED))
                .values(
                    status=OpStatus.FAILED.value, error=error or "not run", active_machine_id=None
                )
                .execution_options(synchronize_session=False)
            )
            s.execute(
                update(OperationItem)
                .where(*held)
                .values(active_machine_id=None)
                .execution_options(synchronize_session=False)
            )

    async def _act(self, op: Operation, endpoint: Any) -> BmcResult:
        if op.kind == OperationKind.POWER:
            return await self.controller.power(
                endpoint, PowerAction(op.action), settle_timeout=self.settings.bmc_settle_timeout
            )
        return await self.controller.set_boot_device(
            endpoint,
            BootDevice(op.action),
            persistent=bool(op.params.get("persistent")),
            uefi=bool(op.params.get("uefi", True)),
        )

    async def _run_item(self, op: Operation, item: OperationItem) -> writes.Done:
        """Start ``item`` (committed before the BMC is told) and act; the result, to be written.
        ``item`` is the (detached) row loaded by ``_begin``; its state is written, not read."""
        endpoint = await self.starts(writes.Start(op, item, utcnow()))
        try:
            if endpoint is None:
                raise Invalid(message="machine has no BMC")
            result = await self._act(op, endpoint)
        except Exception as exc:  # noqa: BLE001 - an item fails, the operation goes on
            msg = (
                str(exc)
                if isinstance(exc, BmcError | Invalid)
                else f"internal error: {type(exc).__name__}"
            )
            return writes.Done(op, item, None, msg)
        log.info(
            "operation item done op=%s machine=%s bmc=%s ok=%s attempts=%d elapsed=%.2f",
            op.id,
            item.machine_name,
            endpoint.key,
            result.ok,
            result.attempts,
            result.elapsed,
        )
        return writes.Done(op, item, result, result.message)

    # --- what stopped replicas left ---------------------------------------------------------------

    @staticmethod
    def _fail_requests(s: Any, op_id: str, why: str) -> None:
        """The machines still held by ``op_id`` show its request failed with ``why``."""
        held = list(
            s.scalars(
                select(OperationItem.machine_id).where(
                    OperationItem.operation_id == op_id,
                    OperationItem.active_machine_id.is_not(None),
                )
            )
        )
        if not held:
            return
        op = s.get_one(Operation, op_id)
        s.execute(
            update(Machine)
            .where(Machine.id.in_(held))
            .values(
                power_request=writes.request_view(op, OpStatus.FAILED, why),
                revision=Machine.revision + 1,
            )
            .execution_options(synchronize_session=False)
        )

    def reap_abandoned(self, *, own: bool = False) -> int:
        """Fail what a replica that stopped left held, so its machines take new operations:
        operations of replicas whose liveness lease lapsed (``own``: this replica's, at
        shutdown), and those without a replica (before migration 0008) after STALE_AFTER.
        Returns how many operations were ended."""
        now = utcnow()
        unfinished = Operation.status.in_(_UNFINISHED)
        if own:
            whose = Operation.replica == self.replica
        else:
            whose = or_(
                and_(
                    Operation.replica.is_not(None),
                    Operation.replica.not_in(replicas.live_replicas(now)),
                ),
                and_(Operation.replica.is_(None), Operation.created_at < now - STALE_AFTER),
            )
        with self.db.write() as s:
            ops = list(s.execute(select(Operation.id, Operation.replica).where(unfinished, whose)))
            for op_id, replica in ops:
                why = "abandoned: " + (
                    "server stopped" if own else f"replica {replica or '?'} stopped"
                )
                self._fail_requests(s, op_id, why)
                s.execute(
                    update(OperationItem)
                    .where(
                        OperationItem.operation_id == op_id,
                        OperationItem.active_machine_id.is_not(None),
                    )
                    .values(
                        active_machine_id=None,
                        status=OpStatus.FAILED.value,
                        error=why,
                        finished_at=now,
                    )
                    .execution_options(synchronize_session=False)
                )
                s.execute(
                    update(Operation)
                    .where(Operation.id == op_id)
                    .values(status=OpStatus.FAILED.value, error=why, finished_at=now)
                    .execution_options(synchronize_session=False)
                )
            if not own:  # lapsed liveness leases have done their job
                replicas.forget_lapsed(s, now)
        if ops:
            log.warning(
                "operations abandoned by a stopped replica failed: %s", ", ".join(o for o, _ in ops)
            )
        return len(ops)
