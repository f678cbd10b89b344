"""The node agent: enroll once, then hold one mTLS session to the server and obey it.

Life of the agent (also what ``bronze-agent simulate`` runs for each simulated machine):

1. **Boot.** If the boot id changed since the last run, a pending ``try`` config is reverted and
   a staged config takes effect (:meth:`ConfigApplier.on_boot`).
2. **Identity.** A valid client certificate in the state directory is reused; otherwise the agent
   generates a key + CSR and calls ``Enroll`` with the bootstrap token from the kernel command
   line, verifying the server with the fleet CA baked into the image.
3. **Session.** It dials the session port with its certificate (one TCP+TLS connection per agent:
   ``grpc.use_local_subchannel_pool``), sends ``Hello`` (version, boot id, config versions,
   inventory), then heartbeats every ``heartbeat_interval`` ± jitter and executes commands in
   order. Before two thirds of its certificate's life has passed it sends a CSR and switches to
   the certificate it gets back.
4. **Reconnect.** When the stream ends or fails it dials again after a capped exponential backoff
   with full jitter (so thousands of agents do not reconnect in lock step after a server restart).

Exactly-once effects over an at-least-once channel: every command's result is journaled
(:class:`agent.commands.Journal`) before it is sent, and a resent command is answered from the
journal.

Where things are: this module holds the :class:`Agent` (its options, the run loop with its
backoff, boot bookkeeping, enrollment and credentials);
:mod:`agent.session` holds one session's stream (Hello, heartbeats, the read loop, certificate
renewal) and :mod:`agent.commands` what each command does (config modes and the try timer,
upgrade / mark-good, node ops).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography.x509.oid import NameOID

from agent.apply import ConfigApplier
from agent.commands import Commands, DropSession, Journal
from agent.gen import agent_pb2 as pb
from agent.gen import agent_pb2_grpc as pb_grpc
from agent.identity import (
    Credentials,
    CredentialStore,
    csr_for,
    read_boot_params,
    write_file,
)
from agent.image_manifest import TrustedKey
from agent.install import grub_boot
from agent.inventory import Inventory, collect
from agent.netboot import fetch_script, kernel_args, next_cmdline
from agent.session import AGENT_VERSION, SessionLink, inventory_to_pb
from agent.simbmc import follow_event_log, follow_redfish
from agent.trouble import ServerClock, TroubleReporter
from agent.upgrade import NodeSlots

__all__ = [
    "AGENT_VERSION",
    "CHANNEL_OPTIONS",
    "Agent",
    "AgentFatalError",
    "AgentOptions",
    "EnrollDenied",
    "EnrollPending",
    "Journal",
    "backoff_delay",
    "inventory_to_pb",
]

log = logging.getLogger(__name__)

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    # NOTE: without this, every channel to one target in a process shares one TCP connection.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 0),
]


class AgentFatalError(Exception):
    """Cannot continue without operator action (no token and no certificate)."""


class EnrollDenied(Exception):
    """The server refused the bootstrap token."""


class EnrollPending(Exception):
    """The token is good but the machine is not accepted yet (phase ``discovered``): no
    certificate. Retried with backoff, with the same token."""


@dataclass
class AgentOptions:
    root: Path
    state_dir: Path
    machine_id: str
    token: str
    server: str
    enroll: str
    ca_pem: bytes | None
    heartbeat_interval: float = 30.0
    heartbeat_jitter: float = 0.2
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    fsync: bool = True
    server_name: str | None = None
    fault: str = ""  # "drop-before-result": drop the session once, after applying a config
    inventory: Inventory | None = None
    extra_channel_options: list[tuple[str, Any]] = field(default_factory=list)
    trusted_keys: tuple[TrustedKey, ...] = ()
    """Ed25519 keys OS images must be signed with (empty: the server's word is taken)."""
    power_events: Path | None = None
    """Simulated machines: a BMC simulator's event log; ``PORT cycle|reset`` lines for
    ``bmc_port`` reset this machine as a real BMC would (tests of the server's watchdog)."""
    bmc_port: int = 0
    redfish_system: str = ""
    """Simulated machines behind sushy-emulator: the system URL whose Off -> On powers this
    machine on (``agent.simbmc``)."""
    reboot_seconds: float = 0.0
    """Simulated machines: how long a reboot takes before the new boot starts, counted from the
    command that asked for it (an upgrade's slot write is part of it: "write + reboot take
    1 s"); a reset by the BMC or the watchdog takes all of it."""
    clock_offset: float = 0.0  # seconds added to the system clock (simulating a skewed clock)
    enroll_timeout: float = 15.0
    """Deadline of one ``Enroll`` call (seconds); its retries reuse the same key."""
    netboot_url: str = ""
    """Simulated diskless machines: every boot fetches ``URL/boot.ipxe?mac=netboot_mac`` and
    boots what it names (``agent.netboot``). Empty: the command line stays as it was."""
    netboot_mac: str = ""
    power_events_offset: int | None = None
    """Where this machine's BMC events begin (the simulator's start: events written while
    machines ramp up are theirs too); None: the log's end when the agent starts."""
    powered_off: bool = False
    """Simulated machines: start powered off, until the BMC (``power_events``) turns them on."""
    reboot_command: tuple[str, ...] = ()
    """A real reboot: the command run when a reboot is due (the OS image passes ``busybox
    reboot``, which asks its ``/init`` to stop the agent and reboot). Empty: reboots are
    simulated (a new boot id, the session restarts), as for test and simulated machines."""


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    return rng.uniform(0, min(cap, base * (2 ** min(attempt, 20))))


class Agent:
    def __init__(self, opts: AgentOptions) -> None:
        self.o = opts
        self.o.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.applier = ConfigApplier(opts.root, opts.state_dir, fsync=opts.fsync)
        self.creds_store = CredentialStore(opts.state_dir, fsync=opts.fsync)
        self.journal = Journal(opts.state_dir / "commands.json", fsync=opts.fsync)
        self.rng = random.Random()  # noqa: S311 - jitter, not secrets
        self.creds: Credentials | None = None
        self.boots = 0
        self.sessions = 0
        self.boot_started = time.monotonic()
        self._inventory: Inventory | None = None
        self.reboot_requested: pb.Reboot | None = None
        """Set by a command, the watchdog or the BMC: reboot when the session has ended."""
        self.reboot_since: float | None = None
        """Monotonic time the command asking for the reboot arrived (simulated reboots)."""
        self.slots = NodeSlots.detect(opts.root, opts.state_dir)
        self.interrupt = asyncio.Event()
        """A reset (watchdog, BMC): ends the current session at once."""
        self._watchdog: asyncio.Task[None] | None = None
        self.sim = ""
        """The simulated failure the booted image's kernel args ask for (``bronze.sim=``)."""
        self._netboot_sim = ""
        """What the last netboot booted, as a ``sim`` value (``no-boot``: no kernel)."""
        self.clock = ServerClock(opts.clock_offset)
        self.trouble = TroubleReporter(opts.enroll, opts.ca_pem, self.clock, self.channel_options())
        self.link = SessionLink(self)
        self.commands = Commands(self)

    # -- boot -------------------------------------------------------------------------------------

    @property
    def boot_id_path(self) -> Path:
        return self.o.root / "proc/sys/kernel/random/boot_id"

    def boot_id(self) -> str:
        try:
            return self.boot_id_path.read_text().strip()
        except OSError:
            return ""

    def _boot(self) -> None:
        """Things that happen once per boot of the (simulated) machine."""
        bid = self.boot_id()
        last = self.o.state_dir / "last-boot-id"
        try:
            seen = last.read_text().strip()
        except OSError:
            seen = None
        if seen != bid:
            self.applier.on_boot()
            write_file(last, bid.encode(), fsync=self.o.fsync)
        self.boots += 1
        self.boot_started = time.monotonic()
        self._inventory = None
        self.commands.arm_try_timer()
        self._boot_slots()

    def _boot_slots(self) -> None:
        """Installed machines: EPHEMERAL wipe if asked, the unconfirmed-boot watchdog, and the
        simulated failure modes an image's kernel args may ask for (``bronze.sim=no-boot``:
        the kernel never comes up; ``bronze.sim=unhealthy``: services never get healthy)."""
        if self.slots is None:
            self.sim = self._netboot_sim
            if self.o.netboot_url and self.sim != "no-boot":
                self._record_boot()
            return
        deadline = self.slots.on_boot()
        self._record_boot()
        args = self.slots.booted_args()
        self.sim = next((a.split("=", 1)[1] for a in args if a.startswith("bronze.sim=")), "")
        self.cancel_watchdog()
        if deadline is not None and self.sim != "no-boot":  # no kernel, no agent watchdog
            with contextlib.suppress(RuntimeError):
                self._watchdog = asyncio.get_running_loop().create_task(self._watch(deadline))

    def _record_boot(self) -> None:
        """``STATE_DIR/boots.json``: the last boots (boot id, slot, image), newest last."""
        path = self.o.state_dir / "boots.json"
        try:
            boots = json.loads(path.read_text())
        except (OSError, ValueError):
            boots = []
        bid = self.boot_id()
        if boots and boots[-1].get("boot_id") == bid:
            return  # the agent restarted, the machine did not
        if self.slots is not None:
            r = self.slots.report()
            slot, image = r.slot, r.image_digest
        else:  # netbooted: the image the boot plane served
            slot, image = "", read_boot_params(self.o.root).image
        boots = [*boots, {"boot_id": bid, "slot": slot, "image": image}][-100:]
        write_file(path, json.dumps(boots).encode(), fsync=self.o.fsync)

    def cancel_watchdog(self) -> None:
        if self._watchdog:
            self._watchdog.cancel()
            self._watchdog = None

    async def _watch(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        log.warning(
            "not marked good in time: rebooting into the last good slot machine=%s",
            self.o.machine_id,
        )
        self._request_reboot()

    def _request_reboot(self) -> None:
        self.reboot_requested = self.reboot_requested or pb.Reboot()
        self.interrupt.set()

    async def _netboot(self) -> None:
        """A simulated diskless machine's firmware: the boot script from the server decides what
        boots (its kernel args become ``/proc/cmdline``)."""
        if not self.o.netboot_url or NodeSlots.detect(self.o.root, self.o.state_dir) is not None:
            return  # installed: the firmware boots its disk
        script = await fetch_script(self.o.netboot_url, self.o.netboot_mac)
        args = kernel_args(script) if script is not None else None
        if args is None:
            log.warning("netboot: nothing to boot machine=%s", self.o.machine_id)
            self._netboot_sim = "no-boot"
            return
        path = self.o.root / "proc/cmdline"
        cmdline = next_cmdline(path.read_text() if path.exists() else "", args)
        write_file(path, (cmdline + "\n").encode(), 0o444, fsync=False)
        self._netboot_sim = next(
            (a.split("=", 1)[1] for a in args if a.startswith("bronze.sim=")), ""
        )

    def _simulated_reboot(self, wipe_state: bool) -> None:
        log.info("rebooting (simulated) machine=%s", self.o.machine_id)
        if wipe_state:
            self.creds_store.wipe()
            self.applier.wipe()
            self.creds = None
        write_file(self.boot_id_path, (str(uuid.uuid4()) + "\n").encode(), fsync=self.o.fsync)
        if self.slots is None:  # installed since the last boot: the firmware finds the disk
            self.slots = NodeSlots.detect(self.o.root, self.o.state_dir)
        if self.slots is not None:  # the firmware runs GRUB: boot counting picks the slot
            slot = grub_boot(self.slots.store.backend)
            cmdline = self.o.root / "proc/cmdline"
            words = [w for w in cmdline.read_text().split() if not w.startswith("bronze.slot=")]
            write_file(
                cmdline,
                (" ".join([*words, f"bronze.slot={slot}"]) + "\n").encode(),
                0o444,
                fsync=False,
            )
            self.slots = NodeSlots.detect(self.o.root, self.o.state_dir)
        self._boot()

    async def _real_reboot(self, wipe_state: bool, stop: asyncio.Event) -> None:
        """Run ``reboot_command``, then wait to be stopped (the machine is going down). A
        command that fails is logged and the agent carries on (a new session)."""
        log.info("rebooting machine=%s command=%s", self.o.machine_id, self.o.reboot_command)
        if wipe_state:
            self.creds_store.wipe()
            self.applier.wipe()
            self.creds = None
        try:
            proc = await asyncio.create_subprocess_exec(*self.o.reboot_command)
            rc = await proc.wait()
        except OSError as exc:
            log.error("reboot command failed machine=%s error=%s", self.o.machine_id, exc)
            return
        if rc != 0:
            log.error("reboot command exited with status %s machine=%s", rc, self.o.machine_id)
            return
        await stop.wait()

    # -- main loop --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        events = None
        if self.o.redfish_system:  # its BMC is a Redfish emulator
            events = asyncio.get_running_loop().create_task(
                follow_redfish(self.o.redfish_system, self._request_reboot)
            )
        elif self.o.power_events is not None:  # its BMC is the pyghmi simulator
            events = asyncio.get_running_loop().create_task(
                follow_event_log(
                    self.o.power_events,
                    self.o.power_events_offset,
                    self.o.bmc_port,
                    self._request_reboot,
                )
            )
        if self.o.powered_off:  # a simulated machine waits for its BMC to power it on
            await self._wait_interrupt(stop)
            self.interrupt.clear()
            self.reboot_requested = None
            if stop.is_set():
                if events is not None:
                    events.cancel()
                return
            if self.o.reboot_seconds:
                await asyncio.sleep(self.o.reboot_seconds)
        await self._netboot()
        self._boot()
        attempt = 0
        while not stop.is_set():
            established = False
            self.interrupt.clear()
            try:
                if self.sim == "no-boot":  # a kernel that never comes up: only a reset helps
                    await self._wait_interrupt(stop)
                else:
                    self.creds = await self._ensure_credentials()
                    established = await self.link.run(stop)
            except AgentFatalError:
                raise
            except EnrollDenied:
                log.warning("enrollment denied machine=%s", self.o.machine_id)
                await self._report("enrollment denied")
            except EnrollPending:
                log.warning(
                    "enrollment pending: machine %s not accepted by an operator yet; retrying",
                    self.o.machine_id,
                )
            except grpc.aio.AioRpcError as exc:
                log.info(
                    "session ended machine=%s code=%s details=%s",
                    self.o.machine_id,
                    exc.code().name,
                    exc.details(),
                )
                if not established:
                    await self._report(f"session failed: {exc.code().name}")
            except (OSError, DropSession) as exc:
                log.info("session dropped machine=%s error=%s", self.o.machine_id, exc)
            except Exception:  # noqa: BLE001 - a bug must not stop the agent for good
                log.exception("session failed machine=%s", self.o.machine_id)
            if self.reboot_requested is not None:
                req, self.reboot_requested = self.reboot_requested, None
                if self.o.reboot_command:
                    await self._real_reboot(req.wipe_state, stop)
                    continue
                if self.o.reboot_seconds:  # a simulated machine's firmware and kernel take time
                    spent = time.monotonic() - (self.reboot_since or time.monotonic())
                    await asyncio.sleep(max(0.0, self.o.reboot_seconds - spent))
                self.reboot_since = None
                await self._netboot()
                self._simulated_reboot(req.wipe_state)
                attempt = 0
                continue
            attempt = 0 if established else attempt + 1
            delay = backoff_delay(attempt, self.o.backoff_base, self.o.backoff_max, self.rng)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        self.commands.cancel_try_timer()
        for task in (self._watchdog, events):
            if task is not None:
                task.cancel()

    async def _wait_interrupt(self, stop: asyncio.Event) -> None:
        waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.interrupt.wait())}
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()

    # -- identity ---------------------------------------------------------------------------------

    async def _ensure_credentials(self) -> Credentials:
        """A certificate valid by the server's clock (as far as the agent knows it), else a new
        one from enrollment; with no token, the certificate we have (the server's clock judges)."""
        creds = self.creds or self.creds_store.load()
        if creds is not None and not creds.valid(self.clock.now()):
            self.creds = creds
            await self._report(f"certificate not valid by local clock {self.clock.local()}")
        # Valid by the server's clock, or nothing better to try (no token): the server judges.
        if creds is not None and (creds.valid(self.clock.now()) or not self.o.token):
            return creds
        return await self._enroll()

    async def _report(self, problem: str) -> None:
        creds = self.creds or self.creds_store.load()
        if creds is not None:
            await self.trouble.report(self.o.machine_id or _cn(creds), creds, problem)

    def channel_options(self) -> list[tuple[str, Any]]:
        opts = list(CHANNEL_OPTIONS) + list(self.o.extra_channel_options)
        if self.o.server_name:
            opts.append(("grpc.ssl_target_name_override", self.o.server_name))
        return opts

    async def _enroll(self) -> Credentials:
        if not (self.o.token and self.o.machine_id and self.o.ca_pem and self.o.enroll):
            raise AgentFatalError(
                "no valid client certificate and no bootstrap token/machine id/CA/enroll address"
            )
        key_pem = self.creds_store.enrollment_key()
        csr_pem = csr_for(key_pem, self.o.machine_id)
        creds = grpc.ssl_channel_credentials(root_certificates=self.o.ca_pem)
        async with grpc.aio.secure_channel(
            self.o.enroll, creds, options=self.channel_options()
        ) as channel:
            stub = pb_grpc.EnrollmentStub(channel)
            try:
                resp = await stub.Enroll(
                    pb.EnrollRequest(
                        bootstrap_token=self.o.token,
                        machine_id=self.o.machine_id,
                        csr_pem=csr_pem.decode(),
                        inventory=inventory_to_pb(self.collect_inventory()),
                    ),
                    timeout=self.o.enroll_timeout,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    raise EnrollDenied() from None
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    raise EnrollPending() from None
                raise
        result = Credentials(key_pem, resp.cert_pem.encode(), resp.ca_pem.encode())
        self.creds_store.save(result)
        log.info("enrolled machine=%s not_after=%s", self.o.machine_id, resp.not_after)
        return result

    def collect_inventory(self) -> Inventory:
        if self._inventory is None:
            self._inventory = self.o.inventory or collect(self.o.root)
        return self._inventory


def _cn(creds: Credentials) -> str:
    attrs = creds.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""
