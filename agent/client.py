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

Exactly-once effects over an at-least-once channel: the server resends every unacknowledged
command on each new session, so the agent journals each command id with its result *before*
sending the result, answers a known id from the journal without executing it again, and treats
an already-applied config version as a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from agent import nodeops
from agent.apply import ApplyError, ConfigApplier, reboot_needed
from agent.gen import agent_pb2 as pb
from agent.gen import agent_pb2_grpc as pb_grpc
from agent.identity import Credentials, CredentialStore, new_key_and_csr, write_file
from agent.image_manifest import TrustedKey
from agent.install import grub_boot
from agent.inventory import Inventory, collect
from agent.trouble import ServerClock, TroubleReporter
from agent.upgrade import NodeSlots, UpgradeRefused, fetcher

log = logging.getLogger(__name__)

AGENT_VERSION = "0.1.0"

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


class _DropSession(Exception):
    """Fault injection: end the session abruptly."""


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
    reboot_seconds: float = 0.0
    """Simulated machines: how long a reboot takes before the new boot starts."""
    clock_offset: float = 0.0  # seconds added to the system clock (simulating a skewed clock)


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
        self._boot_started = time.monotonic()
        self._inventory: Inventory | None = None
        self._outq: asyncio.Queue[pb.AgentMessage | None] | None = None
        self._seq = 0
        self._pending_key: bytes | None = None
        self._try_timer: asyncio.Task[None] | None = None
        self._fault_used = False
        self._reboot_requested: pb.Reboot | None = None
        self._node_ops: dict[str, asyncio.Task[None]] = {}
        self.slots = NodeSlots.detect(opts.root, opts.state_dir)
        self._interrupt = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None
        self._sim = ""
        self.clock = ServerClock(opts.clock_offset)
        self.trouble = TroubleReporter(
            opts.enroll, opts.ca_pem, self.clock, self._channel_options()
        )

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
        self._boot_started = time.monotonic()
        self._inventory = None
        self._arm_try_timer()
        self._boot_slots()

    def _boot_slots(self) -> None:
        """Installed machines: EPHEMERAL wipe if asked, the unconfirmed-boot watchdog, and the
        simulated failure modes an image's kernel args may ask for (``bronze.sim=no-boot``:
        the kernel never comes up; ``bronze.sim=unhealthy``: services never get healthy)."""
        if self.slots is None:
            return
        deadline = self.slots.on_boot()
        self._record_boot()
        args = self.slots.booted_args()
        self._sim = next((a.split("=", 1)[1] for a in args if a.startswith("bronze.sim=")), "")
        if self._watchdog:
            self._watchdog.cancel()
            self._watchdog = None
        if deadline is not None and self._sim != "no-boot":  # no kernel, no agent watchdog
            with contextlib.suppress(RuntimeError):
                self._watchdog = asyncio.get_running_loop().create_task(self._watch(deadline))

    def _record_boot(self) -> None:
        """``STATE_DIR/boots.json``: the last boots (boot id, slot, image), newest last."""
        assert self.slots is not None
        path = self.o.state_dir / "boots.json"
        try:
            boots = json.loads(path.read_text())
        except (OSError, ValueError):
            boots = []
        bid = self.boot_id()
        if boots and boots[-1].get("boot_id") == bid:
            return  # the agent restarted, the machine did not
        r = self.slots.report()
        boots = [*boots, {"boot_id": bid, "slot": r.slot, "image": r.image_digest}][-100:]
        write_file(path, json.dumps(boots).encode(), fsync=self.o.fsync)

    async def _watch(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        log.warning(
            "not marked good in time: rebooting into the last good slot machine=%s",
            self.o.machine_id,
        )
        self._request_reboot()

    def _request_reboot(self) -> None:
        self._reboot_requested = self._reboot_requested or pb.Reboot()
        self._interrupt.set()

    def _simulated_reboot(self, wipe_state: bool) -> None:
        log.info("rebooting (simulated) machine=%s", self.o.machine_id)
        if wipe_state:
            self.creds_store.wipe()
            self.applier.wipe()
            self.creds = None
        write_file(self.boot_id_path, (str(uuid.uuid4()) + "\n").encode(), fsync=self.o.fsync)
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

    # -- main loop --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._boot()
        events = None
        if self.o.power_events is not None:
            events = asyncio.get_running_loop().create_task(self._follow_power_events())
        attempt = 0
        while not stop.is_set():
            established = False
            self._interrupt.clear()
            try:
                if self._sim == "no-boot":  # a kernel that never comes up: only a reset helps
                    await self._wait_interrupt(stop)
                else:
                    self.creds = await self._ensure_credentials()
                    established = await self._session(stop)
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
            except (OSError, _DropSession) as exc:
                log.info("session dropped machine=%s error=%s", self.o.machine_id, exc)
            except Exception:  # noqa: BLE001 - a bug must not stop the agent for good
                log.exception("session failed machine=%s", self.o.machine_id)
            if self._reboot_requested is not None:
                req, self._reboot_requested = self._reboot_requested, None
                if self.o.reboot_seconds:  # a simulated machine's firmware and kernel take time
                    await asyncio.sleep(self.o.reboot_seconds)
                self._simulated_reboot(req.wipe_state)
                attempt = 0
                continue
            attempt = 0 if established else attempt + 1
            delay = backoff_delay(attempt, self.o.backoff_base, self.o.backoff_max, self.rng)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        if self._try_timer:
            self._try_timer.cancel()
        for task in (self._watchdog, events):
            if task is not None:
                task.cancel()

    async def _wait_interrupt(self, stop: asyncio.Event) -> None:
        waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._interrupt.wait())}
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()

    async def _follow_power_events(self) -> None:
        """Simulated machines wired to a simulated BMC: its reset is this machine's reset."""
        assert self.o.power_events is not None
        offset = self.o.power_events.stat().st_size if self.o.power_events.exists() else 0
        while True:
            await asyncio.sleep(0.2)
            try:
                with open(self.o.power_events, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read()
            except OSError:
                continue
            offset += len(data)
            for line in data.decode(errors="replace").splitlines():
                port, _, what = line.partition(" ")
                if port == str(self.o.bmc_port) and what in ("cycle", "reset", "on"):
                    log.info("power %s from the BMC machine=%s", what, self.o.machine_id)
                    self._request_reboot()

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

    def _channel_options(self) -> list[tuple[str, Any]]:
        opts = list(CHANNEL_OPTIONS) + list(self.o.extra_channel_options)
        if self.o.server_name:
            opts.append(("grpc.ssl_target_name_override", self.o.server_name))
        return opts

    async def _enroll(self) -> Credentials:
        if not (self.o.token and self.o.machine_id and self.o.ca_pem and self.o.enroll):
            raise AgentFatalError(
                "no valid client certificate and no bootstrap token/machine id/CA/enroll address"
            )
        key_pem, csr_pem = new_key_and_csr(self.o.machine_id)
        creds = grpc.ssl_channel_credentials(root_certificates=self.o.ca_pem)
        async with grpc.aio.secure_channel(
            self.o.enroll, creds, options=self._channel_options()
        ) as channel:
            stub = pb_grpc.EnrollmentStub(channel)
            try:
                resp = await stub.Enroll(
                    pb.EnrollRequest(
                        bootstrap_token=self.o.token,
                        machine_id=self.o.machine_id,
                        csr_pem=csr_pem.decode(),
                        inventory=inventory_to_pb(self._collect_inventory()),
                    ),
                    timeout=15,
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

    # -- session ----------------------------------------------------------------------------------

    def _collect_inventory(self) -> Inventory:
        if self._inventory is None:
            self._inventory = self.o.inventory or collect(self.o.root)
        return self._inventory

    def _hello(self) -> pb.AgentMessage:
        inv = self._collect_inventory()
        return pb.AgentMessage(
            hello=pb.Hello(
                agent_version=AGENT_VERSION,
                boot_id=self.boot_id(),
                # A simulated unhealthy image reports no config: the server sees it not applied.
                config_version="" if self._sim == "unhealthy" else self.applier.current_version,
                staged_config_version=self.applier.staged_version,
                reverted_config_version=self.applier.reverted_version,
                inventory=inventory_to_pb(inv),
                machine_id=self.o.machine_id,
                **self._slot_fields(),
            )
        )

    def _slot_fields(self) -> dict[str, str]:
        if self.slots is None:
            return {}
        r = self.slots.report()
        return {
            "image_digest": r.image_digest,
            "slot": r.slot,
            "last_good_digest": r.last_good_digest,
        }

    def _send(self, msg: pb.AgentMessage) -> None:
        if self._outq is not None:
            self._outq.put_nowait(msg)

    async def _session(self, stop: asyncio.Event) -> bool:
        """One session. Returns whether it was established (the server accepted Hello)."""
        assert self.creds is not None
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.creds.ca_pem,
            private_key=self.creds.key_pem,
            certificate_chain=self.creds.cert_pem,
        )
        outq: asyncio.Queue[pb.AgentMessage | None] = asyncio.Queue()
        outq.put_nowait(self._hello())

        async def outgoing():  # type: ignore[no-untyped-def]
            while True:
                m = await outq.get()
                if m is None:
                    return
                yield m

        established = False
        channel = grpc.aio.secure_channel(self.o.server, creds, options=self._channel_options())
        call = pb_grpc.AgentSessionStub(channel).Session(outgoing())
        hb: asyncio.Task[None] | None = None
        stopper = asyncio.get_running_loop().create_task(stop.wait())
        waker = asyncio.get_running_loop().create_task(self._interrupt.wait())
        try:
            await call.initial_metadata()
            self._outq = outq
            hb = asyncio.get_running_loop().create_task(self._heartbeats())
            reader = call.__aiter__()
            while True:
                nxt = asyncio.ensure_future(reader.__anext__())
                done, _ = await asyncio.wait(
                    {nxt, stopper, waker}, return_when=asyncio.FIRST_COMPLETED
                )
                if nxt not in done:
                    nxt.cancel()
                    break  # stop requested, or a reset (watchdog, BMC)
                try:
                    msg = nxt.result()
                except StopAsyncIteration:
                    break
                if not established:
                    established = True
                    self.sessions += 1
                if msg.HasField("command"):
                    await self._handle(msg.command)
                if self._reboot_requested is not None:
                    outq.put_nowait(None)  # half-close after the result; wait for the server
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self._drain(reader), 5)
                    break
            established = established or call.done()
        finally:
            self._outq = None
            for task in self._node_ops.values():  # a follow ends with its session
                task.cancel()
            self._node_ops.clear()
            stopper.cancel()
            waker.cancel()
            if hb:
                hb.cancel()
            outq.put_nowait(None)
            call.cancel()
            await channel.close(grace=None)
        return established

    @staticmethod
    async def _drain(reader: Any) -> None:
        async for _ in reader:
            pass

    async def _heartbeats(self) -> None:
        i = self.o.heartbeat_interval
        # First beat soon after connecting, spread over one interval.
        await asyncio.sleep(self.rng.uniform(0, i))
        while True:
            self._seq += 1
            self._send(self._heartbeat())
            self._maybe_renew()
            j = self.o.heartbeat_jitter
            await asyncio.sleep(i * self.rng.uniform(1 - j, 1 + j))

    def _heartbeat(self) -> pb.AgentMessage:
        load1 = -1.0
        with contextlib.suppress(OSError, ValueError, IndexError):
            load1 = float((self.o.root / "proc/loadavg").read_text().split()[0])
        return pb.AgentMessage(
            heartbeat=pb.Heartbeat(
                seq=self._seq,
                config_version=self.applier.current_version,
                uptime_seconds=time.monotonic() - self._boot_started,
                load1=load1,
                try_pending=self.applier.trial is not None,
                reverted_config_version=self.applier.reverted_version,
            )
        )

    # -- certificate renewal ----------------------------------------------------------------------

    def _maybe_renew(self, force: bool = False) -> None:
        if self.creds is None or self._pending_key is not None:
            return
        if force or self.creds.should_renew(self.clock.now()):
            key_pem, csr_pem = new_key_and_csr(self.o.machine_id)
            self._pending_key = key_pem
            self._send(
                pb.AgentMessage(certificate_request=pb.CertificateRequest(csr_pem=csr_pem.decode()))
            )
            log.info("certificate renewal requested machine=%s", self.o.machine_id)

    def _install_certificate(self, nc: pb.NewCertificate) -> None:
        key_pem, self._pending_key = self._pending_key, None
        if key_pem is None:
            log.warning("unsolicited certificate ignored machine=%s", self.o.machine_id)
            return
        cert = x509.load_pem_x509_certificate(nc.cert_pem.encode())
        key = serialization.load_pem_private_key(key_pem, password=None)
        der, info = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if cert.public_key().public_bytes(der, info) != key.public_key().public_bytes(der, info):
            log.warning("renewed certificate does not match our key machine=%s", self.o.machine_id)
            return
        self.creds = Credentials(key_pem, nc.cert_pem.encode(), nc.ca_pem.encode())
        self.creds_store.save(self.creds)
        log.info("certificate renewed machine=%s not_after=%s", self.o.machine_id, nc.not_after)

    # -- commands ---------------------------------------------------------------------------------

    async def _handle(self, cmd: pb.Command) -> None:
        op = cmd.WhichOneof("op")
        if op == "node_op":
            # Runs beside the command loop: a followed log must not hold up other commands.
            task = asyncio.get_running_loop().create_task(self._node_op(cmd))
            self._node_ops[cmd.id] = task
            task.add_done_callback(functools.partial(self._node_op_done, cmd.id))
            return
        if op == "cancel_node_op":
            running = self._node_ops.get(cmd.cancel_node_op.command_id)
            if running is not None:
                running.cancel()
                log.info(
                    "node op cancelled machine=%s command=%s",
                    self.o.machine_id,
                    cmd.cancel_node_op.command_id,
                )
            return
        if op == "new_certificate":
            self._install_certificate(cmd.new_certificate)
            return
        if op == "renew_certificate":
            self._maybe_renew(force=True)
            self._send(pb.AgentMessage(result=pb.CommandResult(command_id=cmd.id, ok=True)))
            return
        known = self.journal.get(cmd.id)
        if known is not None:  # executed before; the result got lost: say it again
            self._send(pb.AgentMessage(result=known))
            return
        if op == "apply_config":
            result = self._apply(cmd.id, cmd.apply_config)
        elif op == "confirm_config":
            ok = self.applier.confirm(cmd.confirm_config.version)
            if ok and self._try_timer:
                self._try_timer.cancel()
            result = pb.CommandResult(
                command_id=cmd.id,
                ok=ok,
                applied_version=self.applier.current_version,
                error="" if ok else "no pending try with that version",
            )
        elif op == "upgrade":
            result = await self._upgrade(cmd.id, cmd.upgrade)
        elif op == "mark_good":
            result = self._mark_good(cmd.id, cmd.mark_good)
        elif op == "reboot":
            result = pb.CommandResult(
                command_id=cmd.id,
                ok=True,
                rebooting=True,
                applied_version=self.applier.current_version,
            )
            self._reboot_requested = cmd.reboot
        else:
            result = pb.CommandResult(command_id=cmd.id, ok=False, error=f"unsupported {op}")
        self.journal.put(result)
        if result.rebooting:
            self._reboot_requested = self._reboot_requested or pb.Reboot()
        if op == "apply_config" and self.o.fault == "drop-before-result" and not self._fault_used:
            self._fault_used = True
            raise _DropSession("fault injection: dropped before sending the result")
        self._send(pb.AgentMessage(result=result))

    async def _upgrade(self, command_id: str, up: pb.Upgrade) -> pb.CommandResult:
        if self.slots is None:
            return pb.CommandResult(
                command_id=command_id, ok=False, error="not installed: this machine has no slots"
            )
        try:
            await asyncio.to_thread(self.slots.upgrade, up, self.o.trusted_keys, fetcher())
        except Exception as exc:  # noqa: BLE001 - any failure is this command's answer
            if not isinstance(exc, UpgradeRefused):
                log.exception("upgrade failed machine=%s", self.o.machine_id)
                exc = UpgradeRefused(f"{type(exc).__name__}: {exc}")
            log.warning("upgrade refused machine=%s: %s", self.o.machine_id, exc)
            return pb.CommandResult(command_id=command_id, ok=False, error=str(exc))
        return pb.CommandResult(command_id=command_id, ok=True, rebooting=True)

    def _mark_good(self, command_id: str, mg: pb.MarkGood) -> pb.CommandResult:
        if self.slots is None:
            return pb.CommandResult(command_id=command_id, ok=False, error="no slots")
        try:
            self.slots.mark_good(mg.image_digest)
        except UpgradeRefused as exc:
            return pb.CommandResult(command_id=command_id, ok=False, error=str(exc))
        if self._watchdog:
            self._watchdog.cancel()
            self._watchdog = None
        return pb.CommandResult(command_id=command_id, ok=True)

    def _apply(self, command_id: str, ac: pb.ApplyConfig) -> pb.CommandResult:
        a = self.applier
        if self._sim == "unhealthy":
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
            if version == a.current_version and (trial is None or mode == pb.APPLY_MODE_TRY):
                return res(True)  # already in effect: no-op
            need = reboot_needed((a.current or {}).get("config"), cfg)
            if mode == pb.APPLY_MODE_NO_REBOOT and need:
                return res(False, "reboot required to change: " + ", ".join(need))
            if mode == pb.APPLY_MODE_TRY:
                if need:
                    return res(False, "try mode cannot change boot-time fields: " + ", ".join(need))
                a.begin_try(
                    version,
                    cfg,
                    float(ac.try_timeout_seconds or 120),
                    previous=trial["previous"] if trial else a.current,
                )
                self._arm_try_timer()
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

    def _arm_try_timer(self) -> None:
        if self._try_timer:
            self._try_timer.cancel()
            self._try_timer = None
        trial = self.applier.trial
        if trial is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._try_timer = loop.create_task(self._try_expiry(trial["version"], trial["deadline"]))

    async def _try_expiry(self, version: str, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.time()))
        trial = self.applier.trial
        if trial is not None and trial["version"] == version:
            now = self.applier.revert_try()
            log.warning(
                "try config not confirmed, reverted machine=%s from=%s to=%s",
                self.o.machine_id,
                version,
                now or "-",
            )
            self._seq += 1
            self._send(self._heartbeat())  # tell the server at once

    def _node_op_done(self, command_id: str, _task: asyncio.Task[None]) -> None:
        self._node_ops.pop(command_id, None)

    async def _node_op(self, cmd: pb.Command) -> None:
        def chunk(data: bytes) -> None:
            self._send(pb.AgentMessage(chunk=pb.NodeOpChunk(command_id=cmd.id, data=data)))

        try:
            if cmd.node_op.follow:
                async for data in nodeops.follow(self.o.root, cmd.node_op):
                    chunk(data)
            else:
                data = await asyncio.to_thread(nodeops.run, self.o.root, cmd.node_op)
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


def _cn(creds: Credentials) -> str:
    attrs = creds.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def inventory_to_pb(inv: Inventory) -> pb.Inventory:
    s = inv.smbios
    return pb.Inventory(
        smbios=pb.Smbios(
            uuid=s.uuid,
            serial=s.serial,
            vendor=s.vendor,
            product=s.product,
            board_vendor=s.board_vendor,
            board_product=s.board_product,
            bios_version=s.bios_version,
        ),
        cpus=[
            pb.Cpu(socket=c.socket, model=c.model, cores=c.cores, threads=c.threads, mhz=c.mhz)
            for c in inv.cpus
        ],
        memory_bytes=inv.memory_bytes,
        disks=[
            pb.Disk(
                name=d.name,
                size_bytes=d.size_bytes,
                model=d.model,
                serial=d.serial,
                rotational=d.rotational,
                wwn=d.wwn,
                transport=d.transport,
            )
            for d in inv.disks
        ],
        nics=[
            pb.Nic(
                name=n.name,
                mac=n.mac,
                driver=n.driver,
                speed_mbps=n.speed_mbps,
                link_up=n.link_up,
                mtu=n.mtu,
            )
            for n in inv.nics
        ],
        bmc_address=inv.bmc_address,
    )
