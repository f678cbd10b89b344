"""Out-of-band inspection: fill the inventory from what the BMC says, without booting the host.

``POST /api/v1/machines/{id}/inspect`` (one machine) and ``POST /api/v1/inspect`` (a label
selector) ask each machine's BMC for its host's identity and hardware
(:class:`bmc.inspection.Inspection`: Redfish ``ComputerSystem`` + ``EthernetInterfaces``, or
IPMI System GUID + FRU), the way Ironic's ``redfish`` inspect interface does, and answer when all
are done (synchronously; at most ``max_parallel`` BMCs at once, each call bounded by the driver
timeouts; the BMC address policy is checked again before any packet is sent).

What is found is reconciled with what is recorded by a pure rule (:func:`reconcile`):

- an empty field (SMBIOS UUID, serial) is filled; a NIC MAC not recorded is added;
- a field that already holds *another* value is **not** overwritten: an event
  ``machine.inspect.conflict`` carries ``{field, recorded, found}`` (the operator decides, with
  PATCH); a MAC that belongs to another machine is a conflict too;
- the rest (manufacturer, model, CPUs, memory, BMC GUID) goes to ``hardware["bmc_inspection"]``.

Inspecting twice with the same answer changes nothing and records nothing (no events, no
revision bump); a change writes ``machine.inspected`` with what changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from bmc import BmcEndpoint, BmcError, DriverTimeouts, check_address, default_driver_factory
from bmc.inspection import Inspection, Inspector
from server.errors import Invalid
from server.inventory import machines as inventory
from server.inventory.db import Database
from server.inventory.models import Machine, Nic, utcnow
from server.inventory.secretbox import SecretBox
from server.inventory.selectors import Requirement
from server.power.addresses import net_policy
from server.power.writes import endpoint_of
from server.settings import ServerSettings
from server.types import EventKind

log = logging.getLogger(__name__)

HARDWARE_KEY = "bmc_inspection"
"""Where the facts without a column of their own go in ``machines.hardware``."""


@dataclass(frozen=True)
class Recorded:
    """What the inventory holds for one machine, as the rule needs it."""

    uuid: str | None
    serial: str | None
    macs: frozenset[str]
    hardware_facts: dict[str, Any] | None
    mac_owners: dict[str, str] = field(default_factory=dict)
    """MAC -> name of *another* machine that has it."""


@dataclass(frozen=True)
class Decision:
    """What to write for one machine (pure result of :func:`reconcile`)."""

    set_uuid: str | None = None
    set_serial: str | None = None
    add_macs: tuple[str, ...] = ()
    hardware_facts: dict[str, Any] | None = None
    """New ``hardware["bmc_inspection"]``; None when unchanged."""
    conflicts: tuple[dict[str, Any], ...] = ()

    @property
    def changes(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.set_uuid:
            out["uuid"] = self.set_uuid
        if self.set_serial:
            out["serial"] = self.set_serial
        if self.add_macs:
            out["nics"] = list(self.add_macs)
        if self.hardware_facts is not None:
            out["hardware"] = HARDWARE_KEY
        return out


def reconcile(rec: Recorded, found: Inspection) -> Decision:
    """Fill what is empty, report what differs, never overwrite (pure)."""
    conflicts: list[dict[str, Any]] = []
    set_uuid = set_serial = None
    for name, recorded, value in (
        ("uuid", rec.uuid, found.uuid),
        ("serial", rec.serial, found.serial),
    ):
        if value is None or value == recorded:
            continue
        if recorded is None:
            set_uuid, set_serial = (value, set_serial) if name == "uuid" else (set_uuid, value)
        else:
            conflicts.append({"field": name, "recorded": recorded, "found": value})
    add = []
    for mac in found.macs:
        if mac in rec.macs:
            continue
        if mac in rec.mac_owners:
            conflicts.append(
                {"field": "mac", "recorded": f"machine {rec.mac_owners[mac]}", "found": mac}
            )
        else:
            add.append(mac)
    facts = {k: v for k, v in found.facts().items() if k not in ("uuid", "serial", "macs")}
    return Decision(
        set_uuid=set_uuid,
        set_serial=set_serial,
        add_macs=tuple(sorted(add)),
        hardware_facts=None if facts == rec.hardware_facts else facts,
        conflicts=tuple(conflicts),
    )


@dataclass(frozen=True)
class Target:
    id: str
    name: str
    endpoint: BmcEndpoint | None


class InspectService:
    """Reads machines' BMCs and reconciles the answers into the inventory."""

    def __init__(self, settings: ServerSettings, db: Database, secrets: SecretBox) -> None:
        self.settings = settings
        self.db = db
        self.secrets = secrets
        self.factory = default_driver_factory(
            DriverTimeouts(connect=3.0, read=10.0), probe_timeout=1.0
        )

    def targets(
        self, keys: Sequence[str] | None, selector: tuple[Requirement, ...] | None
    ) -> list[Target]:
        with self.db.read() as s:
            if keys is not None:
                machines = [inventory.get_machine(s, k) for k in keys]  # 404
            else:
                clause = inventory.selector_clause(selector or ())
                machines = list(s.scalars(select(Machine).where(clause).order_by(Machine.name)))
            if not machines:
                raise Invalid(
                    message="the selector matches no machines", details={"field": "selector"}
                )
            return [Target(m.id, m.name, endpoint_of(m, self.secrets)) for m in machines]

    def read_bmc(self, t: Target) -> Inspection:
        """One BMC, blocking (run in a thread). Raises ``BmcError``."""
        assert t.endpoint is not None
        ep = t.endpoint
        check_address(ep.address, net_policy(self.settings), port=ep.port)
        driver = self.factory(ep)
        try:
            if not isinstance(driver, Inspector):
                raise Invalid(message=f"{ep.driver.value} BMCs cannot be inspected")
            return driver.inspect()
        finally:
            driver.close()

    async def inspect(
        self, targets: Sequence[Target], actor: str, max_parallel: int
    ) -> list[dict[str, Any]]:
        gate = asyncio.Semaphore(max_parallel)

        async def one(t: Target) -> dict[str, Any]:
            if t.endpoint is None:
                return {"machine": t.name, "ok": False, "error": "machine has no BMC"}
            async with gate:
                try:
                    found = await run_in_threadpool(self.read_bmc, t)
                except (BmcError, Invalid) as exc:
                    log.warning(
                        "inspect failed machine=%s bmc=%s error=%s", t.name, t.endpoint.key, exc
                    )
                    return {"machine": t.name, "ok": False, "error": str(exc)}
            return await run_in_threadpool(self.record, t, found, actor)

        return list(await asyncio.gather(*(one(t) for t in targets)))

    def record(self, t: Target, found: Inspection, actor: str) -> dict[str, Any]:
        with self.db.write() as s:
            m = s.get(Machine, t.id)
            if m is None:
                return {"machine": t.name, "ok": False, "error": "machine deleted meanwhile"}
            owners = _pairs(
                s.execute(
                    select(Nic.mac, Machine.name)
                    .join(Machine, Machine.id == Nic.machine_id)
                    .where(Nic.mac.in_(found.macs), Nic.machine_id != m.id)
                )
            )
            uuid_owner = (
                s.scalar(
                    select(Machine.name).where(
                        Machine.smbios_uuid == found.uuid, Machine.id != m.id
                    )
                )
                if found.uuid
                else None
            )
            hw = m.hardware.get(HARDWARE_KEY) if isinstance(m.hardware, dict) else None
            rec = Recorded(m.smbios_uuid, m.serial, frozenset(n.mac for n in m.nics), hw, owners)
            d = reconcile(rec, found)
            conflicts = list(d.conflicts)
            if d.set_uuid and uuid_owner is not None:  # unique: another machine holds it
                conflicts.append(
                    {"field": "uuid", "recorded": f"machine {uuid_owner}", "found": d.set_uuid}
                )
                d = Decision(None, d.set_serial, d.add_macs, d.hardware_facts, d.conflicts)
            self._write(s, m, d, actor)
            for c in conflicts:
                inventory.record(
                    s,
                    actor=actor,
                    kind=EventKind.MACHINE_INSPECT_CONFLICT,
                    machine=m,
                    message=f"inspection found {c['field']} {c['found']}, recorded {c['recorded']}",
                    data=c,
                )
            return {
                "machine": m.name,
                "ok": True,
                "error": None,
                "found": found.facts(),
                "changes": d.changes,
                "conflicts": conflicts,
            }

    @staticmethod
    def _write(s: Any, m: Machine, d: Decision, actor: str) -> None:
        if not d.changes:
            return
        if d.set_uuid:
            m.smbios_uuid = d.set_uuid
        if d.set_serial:
            m.serial = d.set_serial
        if d.add_macs:
            specs = [(n.mac, n.name, n.ip) for n in m.nics] + [(x, None, None) for x in d.add_macs]
            inventory.set_nics(m, specs)
        if d.hardware_facts is not None:
            m.hardware = {**(m.hardware or {}), HARDWARE_KEY: d.hardware_facts}
        m.updated_at = utcnow()
        s.flush()
        inventory.record(
            s,
            actor=actor,
            kind=EventKind.MACHINE_INSPECTED,
            machine=m,
            message=f"machine {m.name} inspected through its BMC: {', '.join(sorted(d.changes))}",
            data=d.changes,
        )


def _pairs(result: Any) -> dict[Any, Any]:
    """Two-column rows as a dict."""
    return {a: b for a, b in result}
