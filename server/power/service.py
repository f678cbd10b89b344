"""The power plane inside the server: operations, their runner, and the power-sync loop.

An operation is accepted with 202 and runs in the background on the replica that accepted it;
its state lives in the database (``operations`` / ``operation_items``), so any replica answers
``GET /api/v1/operations/{id}``. A machine can be held by one operation at a time: the unique
``active_machine_id`` column makes the second request fail with 409, on every replica. Each
replica renews a liveness lease (``replica:<id>``); the operations of a replica whose lease
lapsed (it died) are failed by the others, which frees their machines (:meth:`reap_abandoned`).

Power sync polls every BMC once per interval (jittered), on the one replica holding the
``power-sync`` lease. A changed state that no operation caused is recorded as an out-of-band
event; an unreachable BMC makes the state ``unknown`` (never a guess), and after
``power_sync_failures`` failures in a row the machine goes to ``maintenance`` with a fault reason.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, Table, and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, lazyload
from starlette.concurrency import run_in_threadpool

from bmc import (
    BmcController,
    BmcEndpoint,
    BmcError,
    BmcResult,
    BootDevice,
    NetPolicy,
    PowerAction,
    PowerPolicy,
    PowerState,
    check_address,
)
from bmc.netpolicy import ALWAYS_REFUSED
from server.agents import token_wipe
from server.errors import Conflict, Invalid
from server.inventory import groupcommit, singleton_lease
from server.inventory import machines as inventory
from server.inventory.db import Database
from server.inventory.groupcommit import GroupCommit
from server.inventory.models import Event, Lease, Machine, Operation, OperationItem, utcnow
from server.inventory.secretbox import SecretBox
from server.inventory.selectors import Requirement
from server.settings import ServerSettings
from server.types import EventKind, OpStatus, Phase

log = logging.getLogger(__name__)

SYNC_LEASE = "power-sync"
REPLICA_LEASE = "replica:"
_MACHINE_ONLY = (lazyload(Machine.nics), lazyload(Machine.label_rows))
"""Power writes touch a machine's row only: don't select its NICs and labels with it."""
STALE_AFTER = timedelta(minutes=30)
"""Operations from before migration 0008 (no replica recorded) held longer are abandoned."""
REPLICA_TTL = 30.0
"""Seconds a replica's liveness lease lasts; it is renewed every third of that. Another replica
frees the machines held by operations of a replica whose lease lapsed."""


def net_policy(settings: ServerSettings) -> NetPolicy:
    """BMC networks from settings. A listed network inside an always-refused range (loopback,
    link-local) is an explicit opt-in for it; the API's own address is refused unless listed."""
    refused = [ipaddress.ip_network(n) for n in ALWAYS_REFUSED]
    listed = [ipaddress.ip_network(n, strict=False) for n in settings.bmc_networks]
    allow = tuple(
        str(n) for n in listed if any(n.version == r.version and n.subnet_of(r) for r in refused)
    )  # type: ignore[arg-type]
    own: tuple[str, ...] = ()
    try:
        ipaddress.ip_address(settings.api_host)
        own = (settings.api_host,)
    except ValueError:
        pass
    return NetPolicy(networks=tuple(settings.bmc_networks), allow=allow, own=own)


def checked_bmc_address(
    settings: ServerSettings, address: str, port: int | None
) -> tuple[str, int | None]:
    """Validate ``host[:port]`` against the BMC networks; 422 with the reason when refused."""
    try:
        checked = check_address(address, net_policy(settings))
    except BmcError as exc:
        raise Invalid(message=str(exc), details={"field": "bmc.address"}) from None
    if checked.port is not None and port is not None and checked.port != port:
        raise Invalid(
            message="BMC port given twice with different values", details={"field": "bmc.port"}
        )
    return checked.host, checked.port if checked.port is not None else port


@dataclass(frozen=True)
class _Start:
    op: Operation
    item: OperationItem
    now: datetime


@dataclass(frozen=True)
class _Done:
    op: Operation
    item: OperationItem
    result: BmcResult | None
    error: str | None


@dataclass(frozen=True)
class Target:
    machine_id: str
    name: str
    endpoint: BmcEndpoint | None


_BMC_COLUMNS = (
    Machine.bmc_driver,
    Machine.bmc_address,
    Machine.bmc_port,
    Machine.bmc_username,
    Machine.bmc_password_enc,
    Machine.bmc_verify_tls,
    Machine.bmc_ca_bundle,
    Machine.bmc_scheme,
)


def endpoint_of(m: Machine | Row, secrets: SecretBox) -> BmcEndpoint | None:
    """The BMC endpoint of a machine (an ORM object or a row of ``_BMC_COLUMNS``)."""
    if m.bmc_address is None:
        return None
    password = secrets.decrypt(m.bmc_password_enc) if m.bmc_password_enc else ""
    return BmcEndpoint(
        driver=m.bmc_driver or "auto",
        address=m.bmc_address,
        port=m.bmc_port,
        username=m.bmc_username or "",
        password=password,
        verify_tls=m.bmc_verify_tls,
        ca_bundle=m.bmc_ca_bundle,
        scheme=m.bmc_scheme,
    )


def _result(r: BmcResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "state": r.state.value,
        "attempts": r.attempts,
        "elapsed_s": round(r.elapsed, 3),
        "changed": r.changed,
    }
    if r.boot is not None:
        out["boot"] = {
            "device": r.boot.device and r.boot.device.value,
            "persistent": r.boot.persistent,
            "uefi": r.boot.uefi,
        }
    return out


def operation_view(op: Operation) -> dict[str, Any]:
    iso = inventory.iso
    return {
        "id": op.id,
        "kind": op.kind,
        "action": op.action,
        "params": op.params,
        "status": op.status,
        "requested_by": op.requested_by,
        "created_at": iso(op.created_at),
        "started_at": iso(op.started_at),
        "finished_at": iso(op.finished_at),
        "error": op.error,
        "items": [
            {
                "machine_id": i.machine_id,
                "machine": i.machine_name,
                "status": i.status,
                "result": i.result,
                "error": i.error,
                "started_at": iso(i.started_at),
                "finished_at": iso(i.finished_at),
            }
            for i in op.items
        ],
    }


class PowerService:
    """Owns the BMC controller, runs operations and the sync loop of this replica."""

    def __init__(
        self,
        settings: ServerSettings,
        db: Database,
        secrets: SecretBox,
        controller: BmcController | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.secrets = secrets
        self.controller = controller or BmcController(
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
        self.replica = uuid.uuid4().hex[:16]
        # Item starts and results, and power observations, share transactions (server.inventory.groupcommit).
        self._starts = GroupCommit(db, self._items_start)
        self._dones = GroupCommit(db, self._items_done)
        self.writes = groupcommit.calls(db)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sync_task: asyncio.Task[None] | None = None
        self._alive_task: asyncio.Task[None] | None = None

    # --- submitting -------------------------------------------------------------------------------

    def submit(
        self,
        *,
        kind: str,
        action: str,
        params: dict[str, Any],
        actor: str,
        keys: list[str] | None = None,
        selector: tuple[Requirement, ...] | None = None,
    ) -> str:
        """Create an operation holding every selected machine; 409 if one is already held."""
        try:
            with self.db.write() as s:
                # (id, name, bmc_address) rows: a bulk operation selects thousands of machines and
                # ORM objects (with their NICs and labels) cost ~0.1 ms each, holding the GIL.
                wanted = select(Machine.id, Machine.name, Machine.bmc_address)
                if keys is not None:  # ids or names
                    rows = list(
                        s.execute(wanted.where(or_(Machine.id.in_(keys), Machine.name.in_(keys))))
                    )
                    by_key = {r.id: r for r in rows} | {r.name: r for r in rows}
                    machines = [
                        by_key.get(k) or inventory.get_machine(s, k) for k in keys
                    ]  # 404 if unknown
                else:
                    machines = list(
                        s.execute(
                            wanted.where(inventory.selector_clause(selector or ())).order_by(
                                Machine.name
                            )
                        )
                    )
                if not machines:
                    raise Invalid(
                        message="the selector matches no machines", details={"field": "selector"}
                    )
                no_bmc = [m.name for m in machines if m.bmc_address is None]
                if no_bmc:
                    raise Invalid(
                        message=f"machines without a BMC: {', '.join(no_bmc[:20])}",
                        details={"machines": no_bmc},
                    )
                ids = [m.id for m in machines]
                op = Operation(
                    id=str(uuid.uuid4()),
                    kind=kind,
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
                    insert(OperationItem),
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
                now = utcnow()
                s.execute(
                    insert(Event),
                    [
                        {
                            "actor": actor,
                            "kind": f"{kind}.requested",
                            "machine_id": m.id,
                            "machine_name": m.name,
                            "message": f"{kind} {action} requested",
                            "data": {"operation": op.id, **params},
                            "created_at": now,
                        }
                        for m in machines
                    ],
                )
                return op.id
        except IntegrityError:
            raise Conflict(
                message="another operation is already running on " + self._busy_names(ids)
            ) from None

    def _busy_names(self, ids: list[str]) -> str:
        with self.db.read() as s:
            names = s.scalars(
                select(OperationItem.machine_name).where(OperationItem.active_machine_id.in_(ids))
            )
            return ", ".join(sorted(set(names))) or "one of these machines"

    def start(self, op_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self.run(op_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
                return await self._run_item(op, item)

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
                .where(
                    *held, OperationItem.status.in_((OpStatus.QUEUED.value, OpStatus.RUNNING.value))
                )
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

    async def _run_item(self, op: Operation, item: OperationItem) -> bool:
        """``item`` is the (detached) row loaded by ``_begin``; its state is written, not read."""
        endpoint = await self._starts(_Start(op, item, utcnow()))
        try:
            if endpoint is None:
                raise Invalid(message="machine has no BMC")
            if op.kind == "power":
                result = await self.controller.power(
                    endpoint,
                    PowerAction(op.action),
                    settle_timeout=self.settings.bmc_settle_timeout,
                )
            else:
                result = await self.controller.set_boot_device(
                    endpoint,
                    BootDevice(op.action),
                    persistent=bool(op.params.get("persistent")),
                    uefi=bool(op.params.get("uefi", True)),
                )
        except Exception as exc:  # noqa: BLE001 - an item fails, the operation goes on
            msg = (
                str(exc)
                if isinstance(exc, BmcError | Invalid)
                else f"internal error: {type(exc).__name__}"
            )
            await self._dones(_Done(op, item, None, msg))
            return False
        error = None if result.ok else str(result.error)
        await self._dones(_Done(op, item, result, error))
        log.info(
            "operation item done op=%s machine=%s bmc=%s ok=%s attempts=%d elapsed=%.2f",
            op.id,
            item.machine_name,
            endpoint.key,
            result.ok,
            result.attempts,
            result.elapsed,
        )
        return result.ok

    # Item writes are a few statements per batch of machines (executemany), never ORM loads: a
    # bulk operation makes two per machine, and per-machine ORM work cost more CPU than the BMC
    # exchange itself.

    def _items_start(self, s: Session, starts: list[_Start]) -> list[BmcEndpoint | None]:
        t: Table = OperationItem.__table__  # type: ignore[assignment]
        s.execute(
            t.update()
            .where(t.c.id == bindparam("b_id"))
            .values(
                status=OpStatus.RUNNING.value,
                started_at=bindparam("b_at", type_=t.c.started_at.type),
            ),
            [{"b_id": x.item.id, "b_at": x.now} for x in starts],
        )
        for x in starts:
            token_wipe.on_power_item_start(
                s, x.op, x.item
            )  # off/cycle/reset: the boot's token dies
        ids = {x.item.machine_id for x in starts}
        rows = {
            r.id: r for r in s.execute(select(Machine.id, *_BMC_COLUMNS).where(Machine.id.in_(ids)))
        }
        return [
            endpoint_of(rows[x.item.machine_id], self.secrets)
            if x.item.machine_id in rows
            else None
            for x in starts
        ]

    def _items_done(self, s: Session, dones: list[_Done]) -> list[None]:
        now = utcnow()
        items: Table = OperationItem.__table__  # type: ignore[assignment]
        machines: Table = Machine.__table__  # type: ignore[assignment]
        outcomes = [_result(x.result) if x.result else {} for x in dones]
        s.execute(
            items.update()
            .where(items.c.id == bindparam("b_id"))
            .values(
                status=bindparam("b_status"),
                error=bindparam("b_error", type_=items.c.error.type),
                result=bindparam("b_result", type_=items.c.result.type),
                finished_at=bindparam("b_at", type_=items.c.finished_at.type),
                active_machine_id=None,
            ),
            [
                {
                    "b_id": x.item.id,
                    "b_status": (OpStatus.FAILED if x.error else OpStatus.SUCCEEDED).value,
                    "b_error": x.error,
                    "b_result": out,
                    "b_at": now,
                }
                for x, out in zip(dones, outcomes, strict=True)
            ],
        )
        changes = []
        for x in dones:
            observed = (
                x.result.state.value if x.result and x.result.state != PowerState.unknown else None
            )
            desired = (
                PowerAction(x.op.action).target.value
                if not x.error and x.op.kind == "power"
                else None
            )
            if observed or desired:
                changes.append(
                    {
                        "b_id": x.item.machine_id,
                        "b_observed": observed,
                        "b_observed_at": now if observed else None,
                        "b_desired": desired,
                    }
                )
        if changes:  # NULL keeps the column; the revision moves as for any write to the machine
            c = machines.c
            s.execute(
                machines.update()
                .where(c.id == bindparam("b_id"))
                .values(
                    power_observed=func.coalesce(
                        bindparam("b_observed", type_=c.power_observed.type), c.power_observed
                    ),
                    power_observed_at=func.coalesce(
                        bindparam("b_observed_at", type_=c.power_observed_at.type),
                        c.power_observed_at,
                    ),
                    power_desired=func.coalesce(
                        bindparam("b_desired", type_=c.power_desired.type), c.power_desired
                    ),
                    revision=c.revision + 1,
                ),
                changes,
            )
        existing = set(
            s.scalars(select(Machine.id).where(Machine.id.in_({x.item.machine_id for x in dones})))
        )
        events = []
        for x, out in zip(dones, outcomes, strict=True):
            if x.item.machine_id not in existing:  # deleted while the operation ran
                continue
            verb = "failed" if x.error else "succeeded"
            events.append(
                {
                    "actor": x.op.requested_by,
                    "kind": f"{x.op.kind}.{verb}",
                    "machine_id": x.item.machine_id,
                    "machine_name": x.item.machine_name,
                    "created_at": now,
                    "data": {"operation": x.op.id, **out},
                    "message": f"{x.op.kind} {x.op.action} {verb}"
                    + (f": {x.error}" if x.error else ""),
                }
            )
        if events:
            s.execute(insert(Event), events)
        return [None] * len(dones)

    def reap_abandoned(self, *, own: bool = False) -> int:
        """Fail what a replica that stopped left held, so its machines take new operations:
        operations of replicas whose liveness lease lapsed (``own``: this replica's, at
        shutdown), and those without a replica (before migration 0008) after STALE_AFTER.
        Returns how many operations were ended."""
        now = utcnow()
        unfinished = Operation.status.in_((OpStatus.QUEUED.value, OpStatus.RUNNING.value))
        if own:
            whose = Operation.replica == self.replica
        else:
            live = select(Lease.holder).where(
                Lease.name.like(REPLICA_LEASE + "%"), Lease.expires_at > now
            )
            whose = or_(
                and_(Operation.replica.is_not(None), Operation.replica.not_in(live)),
                and_(Operation.replica.is_(None), Operation.created_at < now - STALE_AFTER),
            )
        with self.db.write() as s:
            ops = list(s.execute(select(Operation.id, Operation.replica).where(unfinished, whose)))
            for op_id, replica in ops:
                why = "server stopped" if own else f"replica {replica or '?'} stopped"
                s.execute(
                    update(OperationItem)
                    .where(
                        OperationItem.operation_id == op_id,
                        OperationItem.active_machine_id.is_not(None),
                    )
                    .values(
                        active_machine_id=None,
                        status=OpStatus.FAILED.value,
                        error=f"abandoned: {why}",
                        finished_at=now,
                    )
                    .execution_options(synchronize_session=False)
                )
                s.execute(
                    update(Operation)
                    .where(Operation.id == op_id)
                    .values(
                        status=OpStatus.FAILED.value, error=f"abandoned: {why}", finished_at=now
                    )
                    .execution_options(synchronize_session=False)
                )
            if not own:  # lapsed liveness leases have done their job
                s.execute(
                    delete(Lease).where(
                        Lease.name.like(REPLICA_LEASE + "%"), Lease.expires_at <= now
                    )
                )
        if ops:
            log.warning(
                "operations abandoned by a stopped replica failed: %s", ", ".join(o for o, _ in ops)
            )
        return len(ops)

    def _renew_liveness(self) -> None:
        singleton_lease.acquire(self.db, REPLICA_LEASE + self.replica, self.replica, REPLICA_TTL)

    async def _alive_forever(self) -> None:
        while True:
            await asyncio.sleep(REPLICA_TTL / 3)
            try:
                await run_in_threadpool(self._renew_liveness)
                await run_in_threadpool(self.reap_abandoned)
            except Exception:  # noqa: BLE001 - the loop must survive a database hiccup
                log.exception("replica liveness renewal failed")

    # --- live read and sync -----------------------------------------------------------------------

    async def read_power(self, key: str) -> dict[str, Any]:
        target = await run_in_threadpool(self._target, key)
        if target.endpoint is None:
            raise Invalid(message=f"machine {target.name} has no BMC")
        result = await self.controller.get_power_state(target.endpoint)
        await self.writes(functools.partial(self._observe, target, result))
        return {
            "machine": target.name,
            "state": result.state.value,
            "error": None if result.ok else str(result.error),
        }

    def _target(self, key: str) -> Target:
        with self.db.read() as s:
            m = inventory.get_machine(s, key)
            return Target(m.id, m.name, endpoint_of(m, self.secrets))

    def _observe(self, target: Target, result: BmcResult, s: Session) -> None:
        """Record one poll: out-of-band changes, failures, and maintenance after too many."""
        m = s.get(Machine, target.machine_id, options=_MACHINE_ONLY)
        if m is None:
            return
        before = m.power_observed
        m.power_observed_at = utcnow()
        if result.ok:
            m.power_observed = result.state.value
            m.power_failures = 0
            token_wipe.on_power_observed(s, m)  # seen off: its enrollment token dies
            held = s.scalar(select(OperationItem.id).where(OperationItem.active_machine_id == m.id))
            if before not in (PowerState.unknown.value, result.state.value) and held is None:
                inventory.record(
                    s,
                    actor="power-sync",
                    kind=EventKind.POWER_CHANGED,
                    machine=m,
                    message=f"power changed out of band: {before} -> {result.state.value}",
                    data={"from": before, "to": result.state.value},
                )
            return
        m.power_observed = PowerState.unknown.value
        m.power_failures += 1
        inventory.record(
            s,
            actor="power-sync",
            kind=EventKind.POWER_SYNC_FAILED,
            machine=m,
            message=f"power state read failed ({m.power_failures} in a row): {result.error}",
            data={"failures": m.power_failures},
        )
        if (
            m.power_failures >= self.settings.power_sync_failures
            and m.phase != Phase.MAINTENANCE.value
        ):
            m.fault_reason = f"BMC unreachable: {m.power_failures} power-state reads failed; last: {result.error}"
            inventory.record(
                s,
                actor="power-sync",
                kind=EventKind.MACHINE_MAINTENANCE,
                machine=m,
                message=m.fault_reason,
                data={"from": m.phase},
            )
            m.phase = Phase.MAINTENANCE.value

    def _sync_targets(self) -> list[Target]:
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
        targets = await run_in_threadpool(self._sync_targets)

        async def poll(t: Target) -> None:
            assert t.endpoint is not None
            result = await self.controller.get_power_state(t.endpoint)
            await self.writes(functools.partial(self._observe, t, result))

        await asyncio.gather(*(poll(t) for t in targets))
        return len(targets)

    async def _sync_forever(self) -> None:
        while True:
            try:
                await self.sync_pass()
            except Exception:  # noqa: BLE001 - the loop must survive a bad pass
                log.exception("power sync pass failed")
            await asyncio.sleep(self.settings.power_sync_interval * random.uniform(0.8, 1.2))  # noqa: S311

    async def startup(self) -> None:
        await run_in_threadpool(self._renew_liveness)  # before any operation can be accepted
        await run_in_threadpool(self.reap_abandoned)
        self._alive_task = asyncio.get_running_loop().create_task(self._alive_forever())
        if self.settings.power_sync_enabled:
            self._sync_task = asyncio.get_running_loop().create_task(self._sync_forever())

    async def shutdown(self) -> None:
        loops = [t for t in (self._sync_task, self._alive_task) if t]
        for task in [*loops, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._tasks, *loops, return_exceptions=True)
        # What was cut off is over: free its machines now, not when another replica notices.
        await run_in_threadpool(self.reap_abandoned, own=True)
        await run_in_threadpool(
            singleton_lease.release, self.db, REPLICA_LEASE + self.replica, self.replica
        )
        await run_in_threadpool(self.controller.close)
