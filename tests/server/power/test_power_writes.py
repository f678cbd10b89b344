"""The power runner's batched writes (items, machines, events) on SQLite and PostgreSQL.

The BMCs are a fake driver at the ``DriverFactory`` seam: this is about what the runner writes,
not about BMCs (those are tested against real peers in tests/bmc and
tests/server/power/test_power_e2e).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from bmc import BmcController, BmcEndpoint, BmcTimeoutError, PowerPolicy, PowerState
from server.errors import Conflict
from server.inventory import migrate
from server.inventory.db import Database
from server.inventory.machines import iso
from server.inventory.models import (
    AgentBootstrapToken,
    Event,
    Lease,
    Machine,
    Operation,
    OperationItem,
    utcnow,
)
from server.inventory.secretbox import SecretBox
from server.power import listing
from server.power.kinds import OperationKind
from server.power.service import PowerService
from server.settings import ServerSettings


class Driver:
    """Power is on after any command; BMC port 9 never answers."""

    state: dict[int, PowerState] = {}

    def __init__(self, ep: BmcEndpoint) -> None:
        self.port = ep.port or 0

    def get_power_state(self) -> PowerState:
        if self.port == 9:
            raise BmcTimeoutError(bmc="fake:9", seconds=0.0, detail="silent")
        return self.state.get(self.port, PowerState.off)

    def power_on(self) -> None:
        self.state[self.port] = PowerState.on

    def close(self) -> None:
        pass


@pytest.fixture
def service(db_url: str, tmp_path: Path) -> Iterator[PowerService]:
    migrate.upgrade(db_url)
    db = Database.connect(db_url)
    box = SecretBox(Fernet.generate_key())
    with db.write() as s:
        for i in range(1, 41):
            s.add(
                Machine(
                    id=str(uuid.uuid4()),
                    name=f"w{i:02d}",
                    phase="ready",
                    bmc_driver="ipmi",
                    bmc_address="10.0.0.1",
                    bmc_port=i,
                    bmc_username="admin",
                    bmc_password_enc=box.encrypt("pw"),
                    power_observed="unknown",
                    hardware={},
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
            )
    policy = PowerPolicy(max_attempts=1, poll_interval=0.01, min_interval=0.0, settle_timeout=1.0)
    ctl = BmcController(Driver, policy)  # type: ignore[arg-type]
    svc = PowerService(ServerSettings(data_dir=tmp_path), db, box, controller=ctl)
    yield svc
    ctl.close()
    db.dispose()


def test_bulk_operation_records_items_machines_and_events(service: PowerService) -> None:
    op_id = service.submit(
        kind=OperationKind.POWER, action="on", params={}, actor="tester", selector=()
    )
    asyncio.run(service.run(op_id))
    with service.db.read() as s:
        op = s.get_one(Operation, op_id)
        rows = s.scalars(select(OperationItem).where(OperationItem.operation_id == op_id))
        items = {i.machine_name: i for i in rows}
        machines = {m.name: m for m in s.scalars(select(Machine))}
        events = list(s.scalars(select(Event).where(Event.kind.like("power.%"))))
    assert op.status == "failed" and op.error == "1 of 40 machines failed"
    at = iso(op.created_at)
    ok = [n for n in items if n != "w09"]
    assert all(items[n].status == "succeeded" and items[n].result["state"] == "on" for n in ok)
    assert all(items[n].started_at and items[n].finished_at for n in ok)
    assert all(i.active_machine_id is None for i in items.values())
    assert items["w09"].status == "failed"
    sentence = r"BMC 10\.0\.0\.1:9 did not answer \(1 try in [0-9.]+ s\)"
    assert re.fullmatch(sentence, items["w09"].error or ""), items["w09"].error
    assert all(machines[n].power_observed == "on" and machines[n].power_error is None for n in ok)
    assert all(machines[n].revision == 3 for n in ok)  # request recorded, then its result
    request = {"kind": "power", "action": "on", "operation_id": op_id, "error": None}
    assert all(machines[n].power_request == request | {"result": "succeeded", "at": at} for n in ok)
    failed = machines["w09"]
    assert failed.power_observed == "unknown" and failed.power_observed_at is not None
    assert failed.power_error == items["w09"].error
    assert failed.power_request == request | {
        "result": "failed",
        "at": at,
        "error": failed.power_error,
    }
    kinds = sorted((e.machine_name, e.kind) for e in events if e.kind != "power.requested")
    assert kinds == sorted([(n, "power.succeeded") for n in ok] + [("w09", "power.failed")])
    assert sum(1 for e in events if e.kind == "power.requested") == 40
    assert (
        service.operations.starts.transactions < 40 and service.operations.dones.transactions < 40
    )  # batched


def _held(service: PowerService, op_id: str) -> tuple[str, list[str | None], str | None]:
    with service.db.read() as s:
        op = s.get_one(Operation, op_id)
        held = [
            i.active_machine_id
            for i in s.scalars(select(OperationItem).where(OperationItem.operation_id == op_id))
        ]
        return op.status, held, op.error


def test_operations_of_a_stopped_replica_are_freed(service: PowerService) -> None:
    """A replica that dies mid-operation cannot release its machines: once its liveness lease
    lapses, any other replica fails what it held, so the machines take operations again."""
    live, dead, legacy, old = (
        service.submit(kind="power", action="on", params={}, actor="t", keys=[name])
        for name in ("w01", "w02", "w03", "w04")
    )
    now = utcnow()
    with service.db.write() as s:
        s.add(Lease(name="replica:alive", holder="alive", expires_at=now + timedelta(seconds=30)))
        s.add(Lease(name="replica:gone", holder="gone", expires_at=now - timedelta(seconds=1)))
        s.get_one(Operation, live).replica = "alive"
        s.get_one(Operation, dead).replica = "gone"
        s.get_one(Operation, legacy).replica = None  # from before migration 0008: time decides
        s.get_one(Operation, old).replica = None
        s.get_one(Operation, old).created_at = now - timedelta(hours=1)
    with pytest.raises(Conflict):
        service.submit(kind="power", action="on", params={}, actor="t", keys=["w02"])

    assert service.reap_abandoned() == 2
    assert _held(service, dead)[:2] == ("failed", [None])
    assert _held(service, dead)[2] == "abandoned: replica gone stopped"
    assert _held(service, old)[:2] == ("failed", [None])
    assert _held(service, live)[0] == "queued" and _held(service, live)[1] != [None]
    assert _held(service, legacy)[0] == "queued"
    service.submit(kind="power", action="on", params={}, actor="t", keys=["w02"])  # free again
    with service.db.read() as s:  # the lapsed lease is gone, the live one stays
        assert {x.name for x in s.scalars(select(Lease))} == {"replica:alive"}


def test_shutdown_ends_this_replicas_operations(service: PowerService) -> None:
    async def main() -> tuple[str, str]:
        await service.startup()
        op_id = service.submit(
            kind=OperationKind.POWER, action="on", params={}, actor="t", keys=["w05"]
        )
        with service.db.read() as s:
            leases = {x.name for x in s.scalars(select(Lease))}
        await service.shutdown()  # before the operation ran
        return op_id, next(iter(leases))

    op_id, lease = asyncio.run(main())
    assert lease == f"replica:{service.replica}"
    assert _held(service, op_id) == ("failed", [None], "abandoned: server stopped")
    with service.db.read() as s:
        assert s.scalar(select(Lease).where(Lease.name == lease)) is None


def test_polled_view_reads_items_as_rows_and_matches_the_orm_view(service: PowerService) -> None:
    """GET /operations/{id} reads items as plain rows (a poll of a 1,000-machine operation must
    not build 1,000 ORM objects): the same document as the ORM view, failed item included."""
    op_id = service.submit(
        kind=OperationKind.POWER, action="on", params={}, actor="tester", selector=()
    )
    asyncio.run(service.run(op_id))
    with service.db.read() as s:
        polled = listing.get_operation_view(s, op_id)
        orm = listing.operation_view(s.get_one(Operation, op_id))
        assert listing.get_operation_view(s, "no-such-operation") is None
    assert polled == orm
    assert polled is not None and len(polled["items"]) == 40
    assert [i["status"] for i in polled["items"]].count("failed") == 1


def test_power_down_starts_wipe_enrollment_tokens_in_one_batch(service: PowerService) -> None:
    """A cycle wipes the tokens of the machines it restarts (one query finds them for a batch of
    starts); an ``on`` leaves a token alone. A spent token (w04: its enrollment's grace window)
    goes too, without an event: nothing outstanding was wiped."""
    with service.db.write() as s:
        ids = {m.name: m.id for m in s.scalars(select(Machine))}
        for name in ("w01", "w02", "w04", "w30"):
            s.add(
                AgentBootstrapToken(
                    machine_id=ids[name],
                    token_hash="0" * 64,
                    boot_ref=f"boot-{name}",
                    expires_at=utcnow() + timedelta(hours=1),
                    spent_at=utcnow() if name == "w04" else None,
                )
            )
    keys = ["w01", "w02", "w03", "w04"]
    cycle = service.submit(
        kind=OperationKind.POWER, action="cycle", params={}, actor="t", keys=keys
    )
    asyncio.run(service.run(cycle))
    on = service.submit(kind=OperationKind.POWER, action="on", params={}, actor="t", keys=["w30"])
    asyncio.run(service.run(on))
    with service.db.read() as s:
        left = {t.machine_id for t in s.scalars(select(AgentBootstrapToken))}
        wiped = sorted(
            e.machine_id for e in s.scalars(select(Event).where(Event.kind == "agent.token.wiped"))
        )
    assert left == {ids["w30"]}
    assert wiped == sorted([ids["w01"], ids["w02"]])
