"""The agent API's :class:`~server.agents.store.AgentStore` on the bronze database.

Every method runs its (synchronous, short) transaction in a worker thread, so the gRPC event loop
never blocks on the database. What agents report (Hello, command results, applied versions,
disconnects, acknowledged commands) goes through one group commit
(:mod:`server.inventory.groupcommit`): when a batch of machines reboots, their hundreds of small
writes share a few transactions, in the order they came, instead of queueing one by one on the
database's writer. Config rendering lives here too (:func:`render_for`, :func:`load_patches`):
the REST layer and :meth:`DbAgentStore.get_desired_config` share it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer, lazyload
from sqlalchemy.orm.interfaces import ORMOption

from server.agents import identity
from server.agents.store import (
    CERTIFICATE_REVOKED,
    UNKNOWN_MACHINE,
    AgentHello,
    AgentMachine,
    BootstrapToken,
    CommandOutcome,
    DesiredConfig,
    IssuedCertificate,
    PendingCommand,
    SpentToken,
    certificate_accepted,
)
from server.config import ConfigError
from server.config.render import Rendered
from server.config.stored import load_patches, render_for
from server.inventory import groupcommit, readcache
from server.inventory.db import Database
from server.inventory.machines import as_utc
from server.inventory.machines import record as record_event_row
from server.inventory.models import (
    AgentBootstrapToken,
    AgentPendingCommand,
    AgentState,
    Generation,
    Machine,
    utcnow,
)
from server.types import EventKind, Phase

log = logging.getLogger(__name__)

ENROLLMENT_PHASES = frozenset(
    {Phase.DISCOVERED, Phase.REGISTERED, Phase.PROVISIONING, Phase.READY, Phase.UPGRADING}
)


def _state(s: Session, machine_id: str, *options: ORMOption) -> AgentState:
    st = s.get(AgentState, machine_id, options=options)
    if st is None:
        st = AgentState(machine_id=machine_id, inventory={}, connected=False)
        s.add(st)
    return st


def _state_of(s: Session, machine_id: str) -> AgentState | None:
    """The machine's agent state (created if missing), or None for a machine that is gone."""
    if s.get(Machine, machine_id) is None:
        return None
    return _state(s, machine_id)


def _set_state(s: Session, machine_id: str, values: dict[str, Any]) -> None:
    """One UPDATE when the row exists (no load of its inventory JSON), else create it."""
    done = s.execute(update(AgentState).where(AgentState.machine_id == machine_id).values(**values))
    if done.rowcount:  # type: ignore[attr-defined]
        return
    st = _state_of(s, machine_id)
    if st is not None:
        for k, v in values.items():
            setattr(st, k, v)


def _retry(work: Callable[[], None]) -> None:
    """Run a write once more if it lost a race creating the same agent-state row."""
    try:
        work()
    except IntegrityError:
        work()


class DbAgentStore:
    """:class:`~server.agents.store.AgentStore` on :class:`~server.inventory.db.Database`."""

    def __init__(self, db: Database, replica_url: str | None = None) -> None:
        self.db = db
        self.replica_url = replica_url
        """This replica's REST URL, saved with each session it accepts (node ops go there)."""
        self._reports = groupcommit.calls(db)

    async def _report(self, work: Callable[[Session], None]) -> None:
        """A report's write, in the group commit (once more if it lost a race creating the
        same agent-state row on another replica)."""
        try:
            await self._reports(work)
        except IntegrityError:
            await self._reports(work)

    # machines

    def _get_machine(self, machine_id: str) -> AgentMachine | None:
        with self.db.read() as s:
            phase = s.scalar(select(Machine.phase).where(Machine.id == machine_id))
        if phase is None:
            return None
        return AgentMachine(machine_id, phase in ENROLLMENT_PHASES, phase != Phase.DISCOVERED)

    async def get_machine(self, machine_id: str) -> AgentMachine | None:
        return await asyncio.to_thread(self._get_machine, machine_id)

    # bootstrap tokens

    def _save_token(self, token: BootstrapToken) -> None:
        with self.db.write() as s:
            row = s.get(AgentBootstrapToken, token.machine_id)
            if row is None:
                s.add(
                    AgentBootstrapToken(
                        machine_id=token.machine_id,
                        token_hash=token.token_hash,
                        boot_ref=token.boot_ref,
                        expires_at=token.expires_at,
                    )
                )
            else:
                row.token_hash, row.boot_ref, row.expires_at = (
                    token.token_hash,
                    token.boot_ref,
                    token.expires_at,
                )
                row.spent_at = row.spent_key_sha256 = row.spent_cert_pem = None

    async def save_bootstrap_token(self, token: BootstrapToken) -> None:
        await asyncio.to_thread(self._save_token, token)

    def _get_token(self, machine_id: str) -> BootstrapToken | None:
        with self.db.read() as s:
            row = s.get(AgentBootstrapToken, machine_id)
            if row is None:
                return None
            spent = None
            if row.spent_at is not None:
                spent = SpentToken(
                    as_utc(row.spent_at), row.spent_key_sha256 or "", row.spent_cert_pem or ""
                )
            return BootstrapToken(
                row.machine_id, row.token_hash, row.boot_ref, as_utc(row.expires_at), spent
            )

    async def get_bootstrap_token(self, machine_id: str) -> BootstrapToken | None:
        return await asyncio.to_thread(self._get_token, machine_id)

    def _spend_token(self, machine_id: str, token_hash: str, spent: SpentToken) -> bool:
        t = AgentBootstrapToken
        stmt = (
            update(t)
            .where(t.machine_id == machine_id, t.token_hash == token_hash, t.spent_at.is_(None))
            .values(
                spent_at=spent.at, spent_key_sha256=spent.key_sha256, spent_cert_pem=spent.cert_pem
            )
        )
        with self.db.write() as s:
            return bool(s.execute(stmt).rowcount)  # type: ignore[attr-defined]

    async def spend_bootstrap_token(
        self, machine_id: str, token_hash: str, spent: SpentToken
    ) -> bool:
        return await asyncio.to_thread(self._spend_token, machine_id, token_hash, spent)

    def _delete_token(self, machine_id: str, token_hash: str | None) -> bool:
        stmt = delete(AgentBootstrapToken).where(AgentBootstrapToken.machine_id == machine_id)
        if token_hash is not None:
            stmt = stmt.where(AgentBootstrapToken.token_hash == token_hash)
        with self.db.write() as s:
            return bool(s.execute(stmt).rowcount)  # type: ignore[attr-defined]

    async def delete_bootstrap_token(self, machine_id: str, token_hash: str | None = None) -> bool:
        return await asyncio.to_thread(self._delete_token, machine_id, token_hash)

    # what the agent reports

    def _record_discovered_inventory(self, machine_id: str, inventory: dict[str, Any]) -> None:
        with self.db.write() as s:
            m = s.get(Machine, machine_id)
            if m is not None and m.hardware != inventory:
                m.hardware = inventory
                m.updated_at = utcnow()

    async def record_discovered_inventory(self, machine_id: str, inventory: dict[str, Any]) -> None:
        await asyncio.to_thread(self._record_discovered_inventory, machine_id, inventory)

    def _record_event(
        self, machine_id: str, kind: EventKind, message: str, data: dict[str, Any]
    ) -> None:
        with self.db.write() as s:
            if s.get(Machine, machine_id) is None:
                return
            record_event_row(
                s, actor="agent-api", kind=kind, machine_id=machine_id, message=message, data=data
            )

    async def record_event(
        self, machine_id: str, kind: EventKind, message: str, data: dict[str, Any]
    ) -> None:
        await asyncio.to_thread(self._record_event, machine_id, kind, message, data)

    def _record_certificate(self, machine_id: str, cert: IssuedCertificate, renewal: bool) -> None:
        with self.db.write() as s:
            if s.get(Machine, machine_id) is None:
                return
            st = _state(s, machine_id)
            before = {st.cert_serial, st.cert_previous_serial}
            # Enrollment revokes every earlier certificate; a renewal keeps the renewed-from
            # one until the agent uses the new one (server.agents.revocation).
            st.cert_previous_serial = st.cert_serial if renewal else None
            st.cert_serial = str(cert.serial)
            st.cert_not_after = cert.not_after
            if before - {st.cert_serial, st.cert_previous_serial, None}:
                readcache.mark(s, readcache.CERTIFICATES)  # a serial stopped being accepted

    async def record_certificate(
        self, machine_id: str, cert: IssuedCertificate, *, renewal: bool = False
    ) -> None:
        await asyncio.to_thread(_retry, lambda: self._record_certificate(machine_id, cert, renewal))

    def _session_refusal(self, machine_id: str, serial: int | None) -> str:
        with self.db.read() as s:
            row = s.execute(
                select(Machine.id, AgentState.cert_serial, AgentState.cert_previous_serial)
                .outerjoin(AgentState, AgentState.machine_id == Machine.id)
                .where(Machine.id == machine_id)
            ).first()
        if row is None:
            return UNKNOWN_MACHINE
        if serial is not None and not self._accepted(machine_id, serial, row[1], row[2]):
            return CERTIFICATE_REVOKED
        return ""

    async def session_refusal(self, machine_id: str, serial: int | None) -> str:
        return await asyncio.to_thread(self._session_refusal, machine_id, serial)

    def _certificate_accepted(self, machine_id: str, serial: int) -> bool:
        with self.db.read() as s:
            row = s.execute(
                select(AgentState.cert_serial, AgentState.cert_previous_serial).where(
                    AgentState.machine_id == machine_id
                )
            ).first()
        return row is not None and self._accepted(machine_id, serial, row[0], row[1])

    def _accepted(
        self, machine_id: str, serial: int, current: str | None, previous: str | None
    ) -> bool:
        """Whether ``serial`` opens sessions; the first use of a renewed certificate retires
        the one it replaced."""
        if not certificate_accepted(serial, current, previous):
            return False
        if previous is not None and str(serial) == current:  # the renewed certificate is in use
            with self.db.write() as s:
                s.execute(
                    update(AgentState)
                    .where(AgentState.machine_id == machine_id, AgentState.cert_serial == current)
                    .values(cert_previous_serial=None)
                )
                readcache.mark(s, readcache.CERTIFICATES)
        return True

    async def certificate_accepted(self, machine_id: str, serial: int) -> bool:
        return await asyncio.to_thread(self._certificate_accepted, machine_id, serial)

    def _accepted_certificates(self, machine_ids: Sequence[str]) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        with self.db.read() as s:
            for i in range(0, len(machine_ids), 1000):
                rows = s.execute(
                    select(Machine.id, AgentState.cert_serial, AgentState.cert_previous_serial)
                    .outerjoin(AgentState, AgentState.machine_id == Machine.id)
                    .where(Machine.id.in_(machine_ids[i : i + 1000]))
                )
                out.update({r[0]: {int(x) for x in (r[1], r[2]) if x} for r in rows})
        return out

    async def accepted_certificates(self, machine_ids: Sequence[str]) -> dict[str, set[int]]:
        return await asyncio.to_thread(self._accepted_certificates, list(machine_ids))

    def _certificates_generation(self) -> int | None:
        with self.db.read() as s:
            value = s.scalar(
                select(Generation.value).where(Generation.name == readcache.CERTIFICATES)
            )
        if value is None:  # never bumped yet: create the row (this round still checks all)
            with self.db.write() as s:
                readcache.mark(s, readcache.CERTIFICATES)
        return value

    async def certificates_generation(self) -> int | None:
        return await asyncio.to_thread(self._certificates_generation)

    def _record_hello(self, s: Session, machine_id: str, hello: AgentHello) -> None:
        # The machine without its NICs and labels (two more queries a Hello never reads), the
        # agent state without its config documents (read only when the applied version moves).
        m = s.get(
            Machine, machine_id, options=(lazyload(Machine.nics), lazyload(Machine.label_rows))
        )
        if m is None:
            return
        st = _state(
            s, machine_id, defer(AgentState.pushed_config), defer(AgentState.applied_config)
        )
        st.agent_version = hello.agent_version
        st.boot_id = hello.boot_id
        st.inventory = hello.inventory
        st.hello_at = hello.at
        st.last_seen = hello.at
        st.staged_config_version = hello.staged_config_version or None
        st.image_digest = hello.image_digest or None
        st.slot = hello.slot or None
        st.last_good_digest = hello.last_good_digest or None
        self._set_applied(st, hello.config_version or None)
        st.connected = True
        st.replica_url = self.replica_url
        identity.check_hello(s, m, st, hello.inventory)
        if st.identity_conflict is None and m.hardware != hello.inventory:
            m.hardware = hello.inventory
            m.updated_at = utcnow()

    async def record_hello(self, machine_id: str, hello: AgentHello) -> None:
        await self._report(lambda s: self._record_hello(s, machine_id, hello))

    def _record_seen(self, seen: Mapping[str, dt.datetime]) -> None:
        with self.db.write() as s:
            for mid, at in seen.items():
                s.execute(
                    update(AgentState).where(AgentState.machine_id == mid).values(last_seen=at)
                )

    async def record_seen(self, seen: Mapping[str, dt.datetime]) -> None:
        await asyncio.to_thread(self._record_seen, dict(seen))

    @staticmethod
    def _set_applied(st: AgentState, version: str | None) -> None:
        if version == st.applied_config_version:
            return
        st.applied_config_version = version
        if version is not None and version == st.desired_config_version:
            st.applied_config = st.pushed_config
        else:
            st.applied_config = None

    def _record_applied(self, s: Session, machine_id: str, version: str) -> None:
        st = _state_of(s, machine_id)
        if st is not None:
            self._set_applied(st, version or None)

    async def record_applied_config(self, machine_id: str, version: str) -> None:
        await self._report(lambda s: self._record_applied(s, machine_id, version))

    async def record_command_result(self, machine_id: str, outcome: CommandOutcome) -> None:
        values = {
            "last_command_id": outcome.command_id,
            "last_command_ok": outcome.ok,
            "last_command_error": outcome.error or None,
            "last_command_at": outcome.at,
        }
        await self._report(lambda s: _set_state(s, machine_id, values))

    async def record_disconnected(self, machine_id: str, at: dt.datetime) -> None:
        values = {"connected": False, "disconnected_at": at}
        await self._report(lambda s: _set_state(s, machine_id, values))

    # desired config

    def _desired(self, machine_id: str) -> DesiredConfig | None:
        with self.db.read() as s:
            patches = load_patches(s)
            if not patches:  # unmanaged: no machine to load (it was 3 queries per reconnect)
                return None
            m = s.get(Machine, machine_id, options=(lazyload(Machine.nics),))
            if m is None:
                return None
            try:
                r = render_for(patches, m)
            except ConfigError as exc:
                log.warning("config of machine %s does not render: %s", machine_id, exc)
                return None
        if r is None:
            return None
        self.note_pushed(machine_id, r)
        return DesiredConfig(r.version, r.canonical_json)

    def note_pushed(self, machine_id: str, rendered: Rendered) -> None:
        """Remember the config document last sent to the machine (for ``applied`` diffs)."""
        self.note_pushed_many([(machine_id, rendered)])

    def note_pushed_many(self, items: Sequence[tuple[str, Rendered]]) -> None:
        """:meth:`note_pushed` for many machines in one transaction."""

        def work() -> None:
            with self.db.write() as s:
                for machine_id, rendered in items:
                    if s.get(Machine, machine_id) is None:
                        continue
                    st = _state(s, machine_id)
                    if st.desired_config_version != rendered.version:
                        st.desired_config_version = rendered.version
                        st.pushed_config = rendered.document
                    if st.applied_config_version == rendered.version and st.applied_config is None:
                        st.applied_config = rendered.document

        _retry(work)

    async def get_desired_config(self, machine_id: str) -> DesiredConfig | None:
        return await asyncio.to_thread(self._desired, machine_id)

    # pending commands

    def _save_pending(self, machine_id: str, cmd: PendingCommand) -> None:
        with self.db.write() as s:
            if cmd.kind == "apply_config":  # a newer config supersedes one still pending
                s.execute(
                    delete(AgentPendingCommand).where(
                        AgentPendingCommand.machine_id == machine_id,
                        AgentPendingCommand.kind == "apply_config",
                    )
                )
            s.add(
                AgentPendingCommand(
                    machine_id=machine_id,
                    command_id=cmd.command_id,
                    kind=cmd.kind,
                    payload=cmd.payload,
                    created_at=cmd.created_at,
                    saved_by=cmd.saved_by,
                )
            )

    async def save_pending_command(self, machine_id: str, cmd: PendingCommand) -> None:
        await asyncio.to_thread(self._save_pending, machine_id, cmd)

    async def delete_pending_command(self, machine_id: str, command_id: str) -> None:
        stmt = delete(AgentPendingCommand).where(
            AgentPendingCommand.machine_id == machine_id,
            AgentPendingCommand.command_id == command_id,
        )

        def work(s: Session) -> None:
            s.execute(stmt)

        await self._report(work)

    def _list_pending(self, machine_id: str) -> list[PendingCommand]:
        with self.db.read() as s:
            rows = s.scalars(
                select(AgentPendingCommand)
                .where(AgentPendingCommand.machine_id == machine_id)
                .order_by(AgentPendingCommand.created_at, AgentPendingCommand.id)
            ).all()
            return [
                PendingCommand(
                    r.command_id, r.kind, bytes(r.payload), as_utc(r.created_at), r.saved_by
                )
                for r in rows
            ]

    async def list_pending_commands(self, machine_id: str) -> list[PendingCommand]:
        return await asyncio.to_thread(self._list_pending, machine_id)

    def _pending_since(self, since: dt.datetime, excluding: str | None) -> list[tuple[str, str]]:
        t = AgentPendingCommand
        stmt = select(t.machine_id, t.command_id).where(t.created_at >= since)
        if excluding is not None:  # the database drops this hub's own rows, Python never sees them
            stmt = stmt.where(or_(t.saved_by.is_(None), t.saved_by != excluding))
        with self.db.read() as s:
            return [(r[0], r[1]) for r in s.execute(stmt).all()]

    async def list_pending_since(
        self, since: dt.datetime, *, excluding: str | None = None
    ) -> list[tuple[str, str]]:
        return await asyncio.to_thread(self._pending_since, since, excluding)
