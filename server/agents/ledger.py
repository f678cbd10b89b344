"""The command ledger: persist, then send, then forget on the agent's acknowledgement.

A state-changing command (apply config, reboot, confirm) is saved through the store *before* it
is sent and deleted only when the agent's ``CommandResult`` for its id arrives. Every new session
(after a reconnect, a network cut, or a server restart) starts by sending the machine's saved
commands again, oldest first (:meth:`CommandLedger.load_backlog`). The agent executes a command
id at most once and applies a config version at most once, so resending is always safe: the
result is "at least once", the effect "exactly once". A newer ``ApplyConfig`` supersedes an older
pending one (here and in the store). Interactive commands (node ops, certificate renewal) are
sent without being saved.

Each command id has a *waiter* (a future resolved with the agent's :class:`CommandOutcome`) so a
caller can wait for the result; the ledger keeps the newest 100,000.

Several replicas. The saved commands are also how a command reaches an agent whose session
another replica holds: every poll the ledger asks the store which commands were saved recently
by anyone but itself (each saved command carries the id of the ledger that saved it,
:attr:`CommandLedger.replica`) and sends those it has not sent yet to the agents this replica
holds. Which ones that is, is decided by two pure functions, :func:`machines_with_news` (from the
cheap ``(machine, command id)`` listing) and :func:`commands_to_send` (from those machines' saved
commands). A ledger never needs its own saved commands from the poll: it sent each one to the
session it held after the save, and a session that opened later loaded it with the backlog.
Commands saved outside a ledger (the rollout runner's, ``saved_by`` empty) are listed to every
replica, this one included.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from agent.gen import agent_pb2 as pb
from server.agents.registry import AgentSession, SessionRegistry
from server.agents.store import AgentStore, CommandOutcome, PendingCommand
from server.agents.types import CommandTimeout

log = logging.getLogger(__name__)

POLL_LOOKBACK = dt.timedelta(seconds=60)
"""How far back each poll looks for commands saved by other replicas (covers slow commits)."""

MAX_WAITERS = 100_000
MAX_ACKED = 10_000


def machines_with_news(
    rows: Iterable[tuple[str, str]],
    held: Collection[str],
    known: Mapping[str, Collection[str]],
    acked: Collection[str],
) -> list[str]:
    """Machines (sorted) whose saved commands include one this replica must still send:
    ``rows`` are ``(machine id, command id)`` saved recently by any replica, ``held`` the
    machines whose session this replica holds, ``known`` the command ids it already sent per
    machine, ``acked`` ids whose result already arrived (their row may not be deleted yet)."""
    return sorted(
        {
            mid
            for mid, cid in rows
            if mid in held and cid not in known.get(mid, ()) and cid not in acked
        }
    )


def commands_to_send(
    saved: Mapping[str, Sequence[PendingCommand]],
    held: Collection[str],
    known: Mapping[str, Collection[str]],
    acked: Collection[str],
) -> list[tuple[str, PendingCommand]]:
    """The saved commands (``machine id -> commands, oldest first``) this replica must send
    now: those of machines it holds, not sent by it yet and not acknowledged; in machine order,
    then oldest first."""
    out = []
    for mid in sorted(saved):
        if mid not in held:
            continue
        mine = known.get(mid, ())
        out += [
            (mid, p) for p in saved[mid] if p.command_id not in mine and p.command_id not in acked
        ]
    return out


class CommandLedger:
    """Pending commands per machine, their waiters, and recently acknowledged ids."""

    def __init__(
        self, store: AgentStore, now: Callable[[], dt.datetime], counters: Counter[str]
    ) -> None:
        self._store = store
        self._now = now
        self._counters = counters
        self._pending: dict[str, dict[str, PendingCommand]] = {}
        self._waiters: OrderedDict[str, asyncio.Future[CommandOutcome]] = OrderedDict()
        self._acked: OrderedDict[str, None] = OrderedDict()
        self.replica = uuid.uuid4().hex
        """Saved with each command this ledger saves (``saved_by``); its poll skips them. New
        at every start, so a restarted replica's poll sees what its previous run saved."""

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def known(self, machine_id: str) -> dict[str, PendingCommand]:
        """The machine's commands this replica sent and still waits on (by id)."""
        return self._pending.setdefault(machine_id, {})

    def is_pending(self, machine_id: str, command_id: str) -> bool:
        return command_id in self._pending.get(machine_id, {})

    def _supersede_apply(self, machine_id: str) -> None:
        mine = self.known(machine_id)
        for cid in [cid for cid, pc in mine.items() if pc.kind == "apply_config"]:
            del mine[cid]

    def _expect(self, command_id: str) -> None:
        if command_id not in self._waiters:
            self._waiters[command_id] = asyncio.get_running_loop().create_future()
        while len(self._waiters) > MAX_WAITERS:
            _, old = self._waiters.popitem(last=False)
            old.cancel()

    def future(self, command_id: str) -> asyncio.Future[CommandOutcome] | None:
        return self._waiters.get(command_id)

    async def submit(
        self, machine_id: str, cmd: pb.Command, session: AgentSession | None, *, persist: bool
    ) -> None:
        """Register a waiter, save the command if ``persist``, send it if ``session``."""
        self._waiters.pop(cmd.id, None)
        self._expect(cmd.id)
        if persist:
            kind = cmd.WhichOneof("op") or ""
            if kind == "apply_config":  # a newer config supersedes an older one still pending
                self._supersede_apply(machine_id)
            pc = PendingCommand(
                cmd.id, kind, cmd.SerializeToString(), self._now(), saved_by=self.replica
            )
            await self._store.save_pending_command(machine_id, pc)
            self.known(machine_id)[cmd.id] = pc
        if session is not None:
            self._counters["commands_sent"] += 1
            session.send(pb.ServerMessage(command=cmd))

    async def wait_result(self, command_id: str, timeout: float) -> CommandOutcome:
        fut = self._waiters.get(command_id)
        if fut is None:
            raise KeyError(command_id)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            raise CommandTimeout(command_id) from None

    async def load_backlog(self, machine_id: str) -> list[pb.Command]:
        """The machine's saved commands, oldest first, now known (and awaited) here."""
        pending = await self._store.list_pending_commands(machine_id)
        self._pending[machine_id] = {p.command_id: p for p in pending}
        for p in pending:
            self._expect(p.command_id)
        return [pb.Command.FromString(p.payload) for p in pending]

    async def forget(self, machine_id: str, command_id: str) -> None:
        """The agent answered ``command_id``: delete the saved command (if it is one)."""
        if command_id in self._pending.get(machine_id, {}):
            del self._pending[machine_id][command_id]
            self._acked[command_id] = None
            while len(self._acked) > MAX_ACKED:
                self._acked.popitem(last=False)
            await self._store.delete_pending_command(machine_id, command_id)

    def wake(self, outcome: CommandOutcome) -> None:
        """Hand the agent's answer to whoever waits for it."""
        fut = self._waiters.get(outcome.command_id)
        if fut is not None and not fut.done():
            fut.set_result(outcome)

    async def poll(self, registry: SessionRegistry) -> int:
        """Send commands other replicas saved for the agents in ``registry``; how many."""
        if not len(registry):
            return 0
        rows = await self._store.list_pending_since(
            self._now() - POLL_LOOKBACK, excluding=self.replica
        )
        if not rows:  # the common case (a fleet push through this replica included): no copy
            # of the held set (10,000 ids) every second
            return 0
        held = registry.held()
        news = machines_with_news(rows, held, self._pending, self._acked)
        saved = {mid: await self._store.list_pending_commands(mid) for mid in news}
        held = registry.held()  # a session may have ended meanwhile
        sent = 0
        for mid, p in commands_to_send(saved, held, self._pending, self._acked):
            session = registry.get(mid)
            if session is None:
                continue
            cmd = pb.Command.FromString(p.payload)
            if cmd.HasField("apply_config"):  # supersedes ours (the store did the same)
                self._supersede_apply(mid)
            self.known(mid)[p.command_id] = p
            self._expect(p.command_id)
            self._counters["commands_sent"] += 1
            session.send(pb.ServerMessage(command=cmd))
            sent += 1
            log.info(
                "command from another replica sent machine=%s command=%s kind=%s",
                mid,
                p.command_id,
                p.kind,
            )
        return sent
