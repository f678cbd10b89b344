"""The power plane inside the server: operations, their runner, and the power-sync loop.

An operation is accepted with 202 and runs in the background on the replica that accepted it;
its state lives in the database (``operations`` / ``operation_items``), so any replica answers
``GET /api/v1/operations/{id}``. A machine can be held by one operation at a time: the unique
``active_machine_id`` column makes the second request fail with 409, on every replica.

Power sync polls every BMC once per interval (jittered), on the one replica holding the
``power-sync`` lease. A changed state that no operation caused is recorded as an out-of-band
event; an unreachable BMC makes the state ``unknown`` (never a guess), and after
``power_sync_failures`` failures in a row the machine goes to ``maintenance`` with a fault reason.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
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
from server import inventory, leases
from server.db import Database
from server.errors import Conflict, Invalid
from server.models import Machine, Operation, OperationItem, utcnow
from server.secretbox import SecretBox
from server.selectors import Requirement
from server.settings import ServerSettings
from server.types import OpStatus, Phase

log = logging.getLogger(__name__)

SYNC_LEASE = "power-sync"
STALE_AFTER = timedelta(minutes=30)


def net_policy(settings: ServerSettings) -> NetPolicy:
    """BMC networks from settings. A listed network inside an always-refused range (loopback,
    link-local) is an explicit opt-in for it; the API's own address is refused unless listed."""
    refused = [ipaddress.ip_network(n) for n in ALWAYS_REFUSED]
    listed = [ipaddress.ip_network(n, strict=False) for n in settings.bmc_networks]
    allow = tuple(str(n) for n in listed if any(n.version == r.version and n.subnet_of(r) for r in refused))  # type: ignore[arg-type]
    own: tuple[str, ...] = ()
    try:
        ipaddress.ip_address(settings.api_host)
        own = (settings.api_host,)
    except ValueError:
        pass
    return NetPolicy(networks=tuple(settings.bmc_networks), allow=allow, own=own)


def checked_bmc_address(settings: ServerSettings, address: str, port: int | None) -> tuple[str, int | None]:
    """Validate ``host[:port]`` against the BMC networks; 422 with the reason when refused."""
    try:
        checked = check_address(address, net_policy(settings))
    except BmcError as exc:
        raise Invalid(message=str(exc), details={"field": "bmc.address"}) from None
    if checked.port is not None and port is not None and checked.port != port:
        raise Invalid(message="BMC port given twice with different values", details={"field": "bmc.port"})
    return checked.host, checked.port if checked.port is not None else port


@dataclass(frozen=True)
class Target:
    machine_id: str
    name: str
    endpoint: BmcEndpoint | None


def endpoint_of(m: Machine, secrets: SecretBox) -> BmcEndpoint | None:
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
    out: dict[str, Any] = {"state": r.state.value, "attempts": r.attempts, "elapsed_s": round(r.elapsed, 3),
                           "changed": r.changed}
    if r.boot is not None:
        out["boot"] = {"device": r.boot.device and r.boot.device.value, "persistent": r.boot.persistent,
                       "uefi": r.boot.uefi}
    return out


def operation_view(op: Operation) -> dict[str, Any]:
    iso = inventory.as_utc
    return {
        "id": op.id,
        "kind": op.kind,
        "action": op.action,
        "params": op.params,
        "status": op.status,
        "requested_by": op.requested_by,
        "created_at": iso(op.created_at),
        "started_at": op.started_at and iso(op.started_at),
        "finished_at": op.finished_at and iso(op.finished_at),
        "error": op.error,
        "items": [
            {"machine_id": i.machine_id, "machine": i.machine_name, "status": i.status, "result": i.result,
             "error": i.error, "started_at": i.started_at and iso(i.started_at),
             "finished_at": i.finished_at and iso(i.finished_at)}
            for i in op.items
        ],
    }


class PowerService:
    """Owns the BMC controller, runs operations and the sync loop of this replica."""

    def __init__(self, settings: ServerSettings, db: Database, secrets: SecretBox,
                 controller: BmcController | None = None) -> None:
        self.settings = settings
        self.db = db
        self.secrets = secrets
        self.controller = controller or BmcController(
            policy=PowerPolicy(max_concurrency=settings.bmc_max_concurrency,
                               min_interval=settings.bmc_min_interval,
                               settle_timeout=settings.bmc_settle_timeout,
                               poll_interval=settings.bmc_poll_interval,
                               deadline=settings.bmc_settle_timeout + 30),
            netpolicy=net_policy(settings))
        self.replica = uuid.uuid4().hex[:16]
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sync_task: asyncio.Task[None] | None = None

    # --- submitting -------------------------------------------------------------------------------

    def submit(self, *, kind: str, action: str, params: dict[str, Any], actor: str,
               keys: list[str] | None = None, selector: tuple[Requirement, ...] | None = None) -> str:
        """Create an operation holding every selected machine; 409 if one is already held."""
        try:
            with self.db.write() as s:
                if keys is not None:
                    machines = [inventory.get_machine(s, k) for k in keys]
                else:
                    machines = list(s.scalars(select(Machine).where(
                        inventory.selector_clause(selector or ())).order_by(Machine.name)))
                if not machines:
                    raise Invalid(message="the selector matches no machines", details={"field": "selector"})
                no_bmc = [m.name for m in machines if m.bmc_address is None]
                if no_bmc:
                    raise Invalid(message=f"machines without a BMC: {', '.join(no_bmc[:20])}",
                                  details={"machines": no_bmc})
                ids = [m.id for m in machines]
                op = Operation(id=str(uuid.uuid4()), kind=kind, action=action, params=params,
                               status=OpStatus.QUEUED.value, requested_by=actor, created_at=utcnow())
                op.items = [OperationItem(machine_id=m.id, machine_name=m.name, active_machine_id=m.id,
                                          status=OpStatus.QUEUED.value, result={}) for m in machines]
                s.add(op)
                s.flush()
                for m in machines:
                    inventory.record(s, actor=actor, kind=f"{kind}.requested", machine=m,
                                     message=f"{kind} {action} requested", data={"operation": op.id, **params})
                return op.id
        except IntegrityError:
            raise Conflict(message="another operation is already running on " + self._busy_names(ids)) from None

    def _busy_names(self, ids: list[str]) -> str:
        with self.db.read() as s:
            names = s.scalars(select(OperationItem.machine_name).where(OperationItem.active_machine_id.in_(ids)))
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

        async def one(item_id: int) -> bool:
            nonlocal next_start
            async with gate:
                async with starts:  # consecutive starts are at least `stagger` apart
                    delay = next_start - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_start = loop.time() + stagger
                return await self._run_item(op, item_id)

        try:
            oks = await asyncio.gather(*(one(item.id) for item in op.items))
        except Exception as exc:  # noqa: BLE001 - record, never lose an operation
            log.exception("operation crashed op=%s", op_id)
            await run_in_threadpool(self._finish, op_id, f"internal error: {type(exc).__name__}")
            return
        failed = len(oks) - sum(oks)
        await run_in_threadpool(self._finish, op_id, f"{failed} of {len(oks)} machines failed" if failed else None)

    def _begin(self, op_id: str) -> Operation:
        with self.db.write() as s:
            op = s.get_one(Operation, op_id)
            op.status = OpStatus.RUNNING.value
            op.started_at = utcnow()
            return op

    def _finish(self, op_id: str, error: str | None) -> None:
        with self.db.write() as s:
            op = s.get_one(Operation, op_id)
            op.status = (OpStatus.FAILED if error else OpStatus.SUCCEEDED).value
            op.error = error
            op.finished_at = utcnow()
            for item in op.items:  # nothing may stay held
                if item.active_machine_id is not None:
                    item.active_machine_id = None
                    if item.status in (OpStatus.QUEUED.value, OpStatus.RUNNING.value):
                        item.status, item.error = OpStatus.FAILED.value, error or "not run"

    async def _run_item(self, op: Operation, item_id: int) -> bool:
        endpoint, name = await run_in_threadpool(self._item_start, item_id, utcnow())
        try:
            if endpoint is None:
                raise Invalid(message="machine has no BMC")
            if op.kind == "power":
                result = await self.controller.power(endpoint, PowerAction(op.action),
                                                     settle_timeout=self.settings.bmc_settle_timeout)
            else:
                result = await self.controller.set_boot_device(
                    endpoint, BootDevice(op.action), persistent=bool(op.params.get("persistent")),
                    uefi=bool(op.params.get("uefi", True)))
        except Exception as exc:  # noqa: BLE001 - an item fails, the operation goes on
            msg = str(exc) if isinstance(exc, BmcError | Invalid) else f"internal error: {type(exc).__name__}"
            await run_in_threadpool(self._item_done, op, item_id, None, msg)
            return False
        error = None if result.ok else str(result.error)
        await run_in_threadpool(self._item_done, op, item_id, result, error)
        log.info("operation item done op=%s machine=%s bmc=%s ok=%s attempts=%d elapsed=%.2f",
                 op.id, name, endpoint.key, result.ok, result.attempts, result.elapsed)
        return result.ok

    def _item_start(self, item_id: int, now: datetime) -> tuple[BmcEndpoint | None, str]:
        with self.db.write() as s:
            item = s.get_one(OperationItem, item_id)
            item.status = OpStatus.RUNNING.value
            item.started_at = now
            m = s.get(Machine, item.machine_id)
            return (endpoint_of(m, self.secrets) if m else None), item.machine_name

    def _item_done(self, op: Operation, item_id: int, result: BmcResult | None, error: str | None) -> None:
        with self.db.write() as s:
            item = s.get_one(OperationItem, item_id)
            item.status = (OpStatus.FAILED if error else OpStatus.SUCCEEDED).value
            item.error = error
            item.result = _result(result) if result else {}
            item.finished_at = utcnow()
            item.active_machine_id = None
            m = s.get(Machine, item.machine_id)
            if m is None:
                return
            if result is not None and result.state != PowerState.unknown:
                m.power_observed = result.state.value
                m.power_observed_at = utcnow()
            if not error and op.kind == "power":
                m.power_desired = PowerAction(op.action).target.value
            verb = "failed" if error else "succeeded"
            inventory.record(s, actor=op.requested_by, kind=f"{op.kind}.{verb}", machine=m,
                             message=f"{op.kind} {op.action} {verb}" + (f": {error}" if error else ""),
                             data={"operation": op.id, **item.result})

    def reap_stale(self) -> int:
        """Fail items left queued/running by a replica that died (older than STALE_AFTER)."""
        cutoff = utcnow() - STALE_AFTER
        with self.db.write() as s:
            res = s.execute(
                update(OperationItem)
                .where(OperationItem.active_machine_id.is_not(None),
                       OperationItem.operation_id.in_(select(Operation.id).where(Operation.created_at < cutoff)))
                .values(active_machine_id=None, status=OpStatus.FAILED.value, error="abandoned: server stopped")
            )
            return int(res.rowcount or 0)  # type: ignore[attr-defined]

    # --- live read and sync -----------------------------------------------------------------------

    async def read_power(self, key: str) -> dict[str, Any]:
        target = await run_in_threadpool(self._target, key)
        if target.endpoint is None:
            raise Invalid(message=f"machine {target.name} has no BMC")
        result = await self.controller.get_power_state(target.endpoint)
        await run_in_threadpool(self._observe, target, result)
        return {"machine": target.name, "state": result.state.value,
                "error": None if result.ok else str(result.error)}

    def _target(self, key: str) -> Target:
        with self.db.read() as s:
            m = inventory.get_machine(s, key)
            return Target(m.id, m.name, endpoint_of(m, self.secrets))

    def _observe(self, target: Target, result: BmcResult) -> None:
        """Record one poll: out-of-band changes, failures, and maintenance after too many."""
        with self.db.write() as s:
            m = s.get(Machine, target.machine_id)
            if m is None:
                return
            before = m.power_observed
            m.power_observed_at = utcnow()
            if result.ok:
                m.power_observed = result.state.value
                m.power_failures = 0
                held = s.scalar(select(OperationItem.id).where(OperationItem.active_machine_id == m.id))
                if before not in (PowerState.unknown.value, result.state.value) and held is None:
                    inventory.record(s, actor="power-sync", kind="power.changed", machine=m,
                                     message=f"power changed out of band: {before} -> {result.state.value}",
                                     data={"from": before, "to": result.state.value})
                return
            m.power_observed = PowerState.unknown.value
            m.power_failures += 1
            inventory.record(s, actor="power-sync", kind="power.sync_failed", machine=m,
                             message=f"power state read failed ({m.power_failures} in a row): {result.error}",
                             data={"failures": m.power_failures})
            if m.power_failures >= self.settings.power_sync_failures and m.phase != Phase.MAINTENANCE.value:
                m.fault_reason = f"BMC unreachable: {m.power_failures} power-state reads failed; last: {result.error}"
                inventory.record(s, actor="power-sync", kind="machine.maintenance", machine=m,
                                 message=m.fault_reason, data={"from": m.phase})
                m.phase = Phase.MAINTENANCE.value

    def _sync_targets(self) -> list[Target]:
        with self.db.read() as s:
            held = select(OperationItem.active_machine_id).where(OperationItem.active_machine_id.is_not(None))
            rows = s.scalars(select(Machine).where(
                Machine.bmc_address.is_not(None), Machine.phase != Phase.MAINTENANCE.value,
                Machine.id.not_in(held)))
            return [Target(m.id, m.name, endpoint_of(m, self.secrets)) for m in rows]

    async def sync_pass(self) -> int:
        """Poll every eligible BMC once (bounded by the controller's limits). Returns the count."""
        if not await run_in_threadpool(leases.acquire, self.db, SYNC_LEASE, self.replica,
                                       self.settings.power_sync_interval * 3):
            return 0
        targets = await run_in_threadpool(self._sync_targets)

        async def poll(t: Target) -> None:
            assert t.endpoint is not None
            result = await self.controller.get_power_state(t.endpoint)
            await run_in_threadpool(self._observe, t, result)

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
        await run_in_threadpool(self.reap_stale)
        if self.settings.power_sync_enabled:
            self._sync_task = asyncio.get_running_loop().create_task(self._sync_forever())

    async def shutdown(self) -> None:
        if self._sync_task:
            self._sync_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *(t for t in [self._sync_task] if t), return_exceptions=True)
        await run_in_threadpool(self.controller.close)
