"""What the agent does with the server's commands, and how each is answered exactly once.

Commands arrive in order on the session (:mod:`agent.session`) and are executed in order, except
node ops (dmesg, logs, stats, ...), which run beside the command loop so a followed log does not
hold up other commands, and end with their session.

* ``ApplyConfig`` applies a config version in one of four modes (``auto``: live, or staged for the
  next boot when a boot-time field changes; ``no-reboot``; ``staged``; ``try``: live, reverted
  unless confirmed before its timeout, by the try timer here or at the next boot).
* ``ConfirmConfig`` keeps a pending ``try`` config; ``Reboot`` asks for a reboot after the result.
* ``Upgrade`` writes an OS image to the inactive slot and reboots into it; ``MarkGood`` confirms
  the booted slot and stops the unconfirmed-boot watchdog.
* ``RenewCertificate`` / ``NewCertificate``: certificate renewal (:mod:`agent.session`).

Exactly-once effects over an at-least-once channel: the server resends every unacknowledged
command on each new session, so the agent journals each command id with its result *before*
sending the result (:class:`Journal`), answers a known id from the journal without
executing it again, and treats an already-applied config version as a no-op.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import nodeops
from agent.apply import ApplyError, reboot_needed
from agent.gen import agent_pb2 as pb
from agent.identity import write_file
from agent.install import InstallError
from agent.install.wipe import install_disk, wipe_disk, wipe_sandbox
from agent.upgrade import UpgradeRefused, fetcher, install_image

if TYPE_CHECKING:
    from agent.runtime import Agent

log = logging.getLogger(__name__)


class DropSession(Exception):
    """Fault injection: end the session abruptly."""


class Journal:
    """Results of executed commands, by id (bounded), persisted in the state directory."""

    LIMIT = 256

    def __init__(self, path: Path, *, fsync: bool) -> None:
        self._path = path
        self._fsync = fsync
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        try:
            self._items.update(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass

    def get(self, command_id: str) -> pb.CommandResult | None:
        r = self._items.get(command_id)
        if r is None:
            return None
        return pb.CommandResult(command_id=command_id, **r)

    def put(self, result: pb.CommandResult) -> None:
        self._items[result.command_id] = {
            "ok": result.ok,
            "error": result.error,
            "applied_version": result.applied_version,
            "rebooting": result.rebooting,
        }
        while len(self._items) > self.LIMIT:
            self._items.popitem(last=False)
        write_file(self._path, json.dumps(self._items).encode(), 0o600, fsync=self._fsync)


class Commands:
    """The command side of one :class:`~agent.runtime.Agent`: dispatch, the journal, the try
    timer and the running node ops."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._try_timer: asyncio.Task[None] | None = None
        self._fault_used = False
        self._node_ops: dict[str, asyncio.Task[None]] = {}

    def _send(self, msg: pb.AgentMessage) -> None:
        self.agent.link.send(msg)

    async def handle(self, cmd: pb.Command) -> None:
        op = cmd.WhichOneof("op")
        if self._handle_unjournaled(cmd, op):
            return
        a = self.agent
        known = a.journal.get(cmd.id)
        if known is not None:  # executed before; the result got lost: say it again
            self._send(pb.AgentMessage(result=known))
            return
        started = time.monotonic()
        result = await self._execute(cmd, op)
        a.journal.put(result)
        if result.rebooting:
            a.reboot_requested = a.reboot_requested or pb.Reboot()
            a.reboot_since = a.reboot_since or started
        if op == "apply_config" and a.o.fault == "drop-before-result" and not self._fault_used:
            self._fault_used = True
            raise DropSession("fault injection: dropped before sending the result")
        self._send(pb.AgentMessage(result=result))

    def _handle_unjournaled(self, cmd: pb.Command, op: str | None) -> bool:
        """Commands outside the journal (node ops, certificates). Returns whether ``op`` was
        one of them."""
        if op == "node_op":
            # Runs beside the command loop: a followed log must not hold up other commands.
            task = asyncio.get_running_loop().create_task(self._node_op(cmd))
            self._node_ops[cmd.id] = task
            task.add_done_callback(functools.partial(self._node_op_done, cmd.id))
        elif op == "cancel_node_op":
            running = self._node_ops.get(cmd.cancel_node_op.command_id)
            if running is not None:
                running.cancel()
                log.info(
                    "node op cancelled machine=%s command=%s",
                    self.agent.o.machine_id,
                    cmd.cancel_node_op.command_id,
                )
        elif op == "new_certificate":
            self.agent.link.install_certificate(cmd.new_certificate)
        elif op == "renew_certificate":
            self.agent.link.maybe_renew(force=True)
            self._send(pb.AgentMessage(result=pb.CommandResult(command_id=cmd.id, ok=True)))
        else:
            return False
        return True

    async def _execute(self, cmd: pb.Command, op: str | None) -> pb.CommandResult:
        a = self.agent
        if op == "apply_config":
            return self._apply(cmd.id, cmd.apply_config)
        if op == "confirm_config":
            ok = a.applier.confirm(cmd.confirm_config.version)
            if ok and self._try_timer:
                self._try_timer.cancel()
            return pb.CommandResult(
                command_id=cmd.id,
                ok=ok,
                applied_version=a.applier.current_version,
                error="" if ok else "no pending try with that version",
            )
        if op == "upgrade":
            return await self._upgrade(cmd.id, cmd.upgrade)
        if op == "install":
            return await self._install(cmd.id, cmd.install)
        if op == "wipe":
            return await self._wipe(cmd.id, cmd.wipe)
        if op == "mark_good":
            return self._mark_good(cmd.id, cmd.mark_good)
        if op == "reboot":
            a.reboot_requested = cmd.reboot
            return pb.CommandResult(
                command_id=cmd.id,
                ok=True,
                rebooting=True,
                applied_version=a.applier.current_version,
            )
        return pb.CommandResult(command_id=cmd.id, ok=False, error=f"unsupported {op}")

    # -- OS images --------------------------------------------------------------------------------

    async def _upgrade(self, command_id: str, up: pb.Upgrade) -> pb.CommandResult:
        a = self.agent
        if a.slots is None:
            return pb.CommandResult(
                command_id=command_id, ok=False, error="not installed: this machine has no slots"
            )
        try:
            await asyncio.to_thread(a.slots.upgrade, up, a.o.trusted_keys, fetcher())
        except Exception as exc:  # noqa: BLE001 - any failure is this command's answer
            if not isinstance(exc, UpgradeRefused):
                log.exception("upgrade failed machine=%s", a.o.machine_id)
                exc = UpgradeRefused(f"{type(exc).__name__}: {exc}")
            log.warning("upgrade refused machine=%s: %s", a.o.machine_id, exc)
            return pb.CommandResult(command_id=command_id, ok=False, error=str(exc))
        return pb.CommandResult(command_id=command_id, ok=True, rebooting=True)

    async def _install(self, command_id: str, ins: pb.Install) -> pb.CommandResult:
        """Provisioning: the image onto the disk, then a reboot into it."""
        a = self.agent
        try:
            await asyncio.to_thread(
                install_image, ins, a.o.trusted_keys, fetcher(), a.o.root, a.o.state_dir, a.slots
            )
        except Exception as exc:  # noqa: BLE001 - any failure is this command's answer
            if not isinstance(exc, UpgradeRefused):
                log.exception("install failed machine=%s", a.o.machine_id)
                exc = UpgradeRefused(f"{type(exc).__name__}: {exc}")
            log.warning("install refused machine=%s: %s", a.o.machine_id, exc)
            return pb.CommandResult(command_id=command_id, ok=False, error=str(exc))
        # freshly installed: boot it (an install re-sent to an installed machine changes nothing)
        return pb.CommandResult(command_id=command_id, ok=True, rebooting=a.slots is None)

    async def _wipe(self, command_id: str, w: pb.Wipe) -> pb.CommandResult:
        """Deprovisioning: erase the install disk (the sandbox disk of a simulated machine)."""
        a = self.agent
        what = "full" if w.full else "quick"

        def wipe() -> int:
            if a.o.root != Path("/"):
                return wipe_sandbox(a.o.root / "system", full=w.full)
            return wipe_disk(w.disk or install_disk(), full=w.full, progress=self._wipe_progress)

        try:
            erased = await asyncio.to_thread(wipe)
        except (InstallError, OSError) as exc:
            log.warning("wipe failed machine=%s: %s", a.o.machine_id, exc)
            return pb.CommandResult(command_id=command_id, ok=False, error=f"wipe failed: {exc}")
        a.slots = None  # nothing installed any more
        a.cancel_watchdog()
        log.info("disk wiped machine=%s mode=%s bytes=%d", a.o.machine_id, what, erased)
        return pb.CommandResult(
            command_id=command_id, ok=True, output=f"{what} wipe: {erased} bytes erased".encode()
        )

    def _wipe_progress(self, done: int, total: int) -> None:
        log.info("wiping machine=%s %d%%", self.agent.o.machine_id, 100 * done // max(1, total))

    def _mark_good(self, command_id: str, mg: pb.MarkGood) -> pb.CommandResult:
        if self.agent.slots is None:
            return pb.CommandResult(command_id=command_id, ok=False, error="no slots")
        try:
            self.agent.slots.mark_good(mg.image_digest)
        except UpgradeRefused as exc:
            return pb.CommandResult(command_id=command_id, ok=False, error=str(exc))
        self.agent.cancel_watchdog()
        return pb.CommandResult(command_id=command_id, ok=True)

    # -- configs ----------------------------------------------------------------------------------

    def _apply(self, command_id: str, ac: pb.ApplyConfig) -> pb.CommandResult:
        a = self.agent.applier
        if self.agent.sim == "unhealthy":
            return pb.CommandResult(
                command_id=command_id, ok=False, error="simulated: services failed to start"
            )

        def res(ok: bool, error: str = "", rebooting: bool = False) -> pb.CommandResult:
            return pb.CommandResult(
                command_id=command_id,
                ok=ok,
                error=error,
                applied_version=a.current_version,
                rebooting=rebooting,
            )

        try:
            cfg = json.loads(ac.config_json)
            if not isinstance(cfg, dict):
                raise ValueError("config is not an object")
        except ValueError as exc:
            return res(False, f"invalid config: {exc}")
        version, mode = ac.version, ac.mode
        trial = a.trial
        try:
            if mode == pb.APPLY_MODE_STAGED:
                if version not in (a.staged_version, a.current_version):
                    a.stage(version, cfg)
                return res(True)
            current = a.current  # one read of config.json for both
            in_effect = (current or {}).get("version", "")
            if version == in_effect and (trial is None or mode == pb.APPLY_MODE_TRY):
                return res(True)  # already in effect: no-op
            need = reboot_needed((current or {}).get("config"), cfg)
            if mode == pb.APPLY_MODE_NO_REBOOT and need:
                return res(False, "reboot required to change: " + ", ".join(need))
            if mode == pb.APPLY_MODE_TRY:
                if need:
                    return res(False, "try mode cannot change boot-time fields: " + ", ".join(need))
                a.begin_try(
                    version,
                    cfg,
                    float(ac.try_timeout_seconds or 120),
                    previous=trial["previous"] if trial else current,
                )
                self.arm_try_timer()
                return res(True)
            if trial is not None:  # a definitive apply supersedes a pending try
                a.confirm(trial["version"])
            if need:  # AUTO: stage, then reboot into it
                a.stage(version, cfg)
                return res(True, rebooting=True)
            a.apply_live(version, cfg, "no-reboot" if mode == pb.APPLY_MODE_NO_REBOOT else "auto")
            return res(True)
        except (ApplyError, OSError) as exc:
            return res(False, f"apply failed: {exc}")

    def arm_try_timer(self) -> None:
        """(Re)start the timer that reverts a pending ``try`` config at its deadline."""
        self.cancel_try_timer()
        trial = self.agent.applier.trial
        if trial is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._try_timer = loop.create_task(self._try_expiry(trial["version"], trial["deadline"]))

    def cancel_try_timer(self) -> None:
        if self._try_timer:
            self._try_timer.cancel()
            self._try_timer = None

    async def _try_expiry(self, version: str, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.time()))
        applier = self.agent.applier
        trial = applier.trial
        if trial is not None and trial["version"] == version:
            now = applier.revert_try()
            log.warning(
                "try config not confirmed, reverted machine=%s from=%s to=%s",
                self.agent.o.machine_id,
                version,
                now or "-",
            )
            self.agent.link.beat()  # tell the server at once

    # -- node ops ---------------------------------------------------------------------------------

    def cancel_node_ops(self) -> None:
        for task in self._node_ops.values():
            task.cancel()
        self._node_ops.clear()

    def _node_op_done(self, command_id: str, _task: asyncio.Task[None]) -> None:
        self._node_ops.pop(command_id, None)

    async def _node_op(self, cmd: pb.Command) -> None:
        root = self.agent.o.root

        def chunk(data: bytes) -> None:
            self._send(pb.AgentMessage(chunk=pb.NodeOpChunk(command_id=cmd.id, data=data)))

        try:
            if cmd.node_op.follow:
                async for data in nodeops.follow(root, cmd.node_op):
                    chunk(data)
            else:
                data = await asyncio.to_thread(nodeops.run, root, cmd.node_op)
                for part in nodeops.chunks(data):
                    chunk(part)
        except nodeops.NodeOpError as exc:
            self._send(
                pb.AgentMessage(
                    result=pb.CommandResult(command_id=cmd.id, ok=False, error=str(exc))
                )
            )
            return
        self._send(pb.AgentMessage(result=pb.CommandResult(command_id=cmd.id, ok=True)))
