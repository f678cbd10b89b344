"""The agent's link to the server: one bidirectional ``Session`` stream at a time.

A session is one mTLS gRPC stream. The agent opens it with ``Hello`` (version, boot id, config
versions, slots, inventory), then the two directions run side by side:

* **Outgoing.** Everything the agent says goes through one queue (:meth:`SessionLink.send`):
  heartbeats every ``heartbeat_interval`` ± jitter (the first one spread over one interval, so
  agents that reconnect together do not beat together), command results, node-op output chunks,
  certificate requests. Between sessions there is no queue and ``send`` drops the message: the
  server resends unacknowledged commands on the next session and the journal answers them.
* **Incoming.** Commands are handed, in order, to :class:`agent.commands.Commands`.

The stream ends when the server ends it, when the agent is stopped, or when a reset arrives (the
unconfirmed-boot watchdog, a simulated BMC). When a command asked for a reboot, the agent
half-closes after the result and waits (briefly) for the server to end the stream, so the result
is delivered before the machine goes away.

Certificate renewal rides on the heartbeat: before two thirds of the certificate's life has passed
the agent sends a CSR for a fresh key, and switches to the certificate the server sends back (only
if it matches that key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.gen import agent_pb2 as pb
from agent.gen import agent_pb2_grpc as pb_grpc
from agent.identity import Credentials, new_key_and_csr, read_boot_params
from agent.inventory import Inventory

if TYPE_CHECKING:
    from agent.runtime import Agent

log = logging.getLogger(__name__)

AGENT_VERSION = "0.1.0"

Outbox = asyncio.Queue[pb.AgentMessage | None]
"""Messages to send on the current session; ``None`` half-closes the stream."""


class SessionLink:
    """The session side of one :class:`~agent.runtime.Agent`: the outgoing queue, heartbeats,
    the read loop and certificate renewal. One per agent, for all of its sessions (heartbeat
    sequence numbers keep counting across sessions)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._outq: Outbox | None = None
        self._seq = 0
        self._pending_key: bytes | None = None

    def send(self, msg: pb.AgentMessage) -> None:
        if self._outq is not None:
            self._outq.put_nowait(msg)

    # -- one session ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> bool:
        """One session. Returns whether it was established (the server accepted Hello)."""
        a = self.agent
        assert a.creds is not None
        outq: Outbox = asyncio.Queue()
        outq.put_nowait(self.hello())
        established = False
        channel = grpc.aio.secure_channel(
            a.o.server, _channel_credentials(a.creds), options=a.channel_options()
        )
        call = pb_grpc.AgentSessionStub(channel).Session(_outgoing(outq))
        hb: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        stopper = loop.create_task(stop.wait())
        waker = loop.create_task(a.interrupt.wait())
        try:
            await call.initial_metadata()
            self._outq = outq
            hb = loop.create_task(self._heartbeats())
            established = await self._read(call, outq, {stopper, waker})
            established = established or call.done()
        finally:
            self._outq = None
            a.commands.cancel_node_ops()  # a follow ends with its session
            stopper.cancel()
            waker.cancel()
            if hb:
                hb.cancel()
            outq.put_nowait(None)
            call.cancel()
            await channel.close(grace=None)
        return established

    async def _read(self, call: Any, outq: Outbox, wakers: set[asyncio.Task[bool]]) -> bool:
        """Execute commands as they come until the stream ends, a waker fires (stop requested,
        or a reset: watchdog, BMC) or a command asked for a reboot. Returns whether any message
        came (the session was established)."""
        a = self.agent
        established = False
        reader = call.__aiter__()
        while True:
            nxt = asyncio.ensure_future(reader.__anext__())
            done, _ = await asyncio.wait({nxt, *wakers}, return_when=asyncio.FIRST_COMPLETED)
            if nxt not in done:
                nxt.cancel()
                return established
            try:
                msg = nxt.result()
            except StopAsyncIteration:
                return established
            if not established:
                established = True
                a.sessions += 1
            if msg.HasField("command"):
                await a.commands.handle(msg.command)
            if a.reboot_requested is not None:
                outq.put_nowait(None)  # half-close after the result; wait for the server
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(_drain(reader), 5)
                return established

    # -- heartbeats -------------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        i = self.agent.o.heartbeat_interval
        # First beat soon after connecting, spread over one interval.
        await asyncio.sleep(self.agent.rng.uniform(0, i))
        while True:
            self.beat()
            self.maybe_renew()
            j = self.agent.o.heartbeat_jitter
            await asyncio.sleep(i * self.agent.rng.uniform(1 - j, 1 + j))

    def beat(self) -> None:
        """Send one heartbeat now."""
        self._seq += 1
        self.send(self._heartbeat())

    def _heartbeat(self) -> pb.AgentMessage:
        a = self.agent
        load1 = -1.0
        with contextlib.suppress(OSError, ValueError, IndexError):
            load1 = float((a.o.root / "proc/loadavg").read_text().split()[0])
        return pb.AgentMessage(
            heartbeat=pb.Heartbeat(
                seq=self._seq,
                config_version=self._config_in_effect(),
                uptime_seconds=time.monotonic() - a.boot_started,
                load1=load1,
                try_pending=a.applier.trial is not None,
                reverted_config_version=a.applier.reverted_version,
            )
        )

    # -- hello ------------------------------------------------------------------------------------

    def hello(self) -> pb.AgentMessage:
        a = self.agent
        inv = a.collect_inventory()
        return pb.AgentMessage(
            hello=pb.Hello(
                agent_version=AGENT_VERSION,
                boot_id=a.boot_id(),
                config_version=self._config_in_effect(),
                staged_config_version=a.applier.staged_version,
                reverted_config_version=a.applier.reverted_version,
                inventory=inventory_to_pb(inv),
                machine_id=a.o.machine_id,
                **self._slot_fields(),
            )
        )

    def _config_in_effect(self) -> str:
        """The config version the agent says is in effect (Hello and every heartbeat alike). A
        simulated unhealthy image reports none: the server sees its config not applied."""
        a = self.agent
        return "" if a.sim == "unhealthy" else a.applier.current_version

    def _slot_fields(self) -> dict[str, str]:
        if self.agent.slots is None:  # netbooted: the image the boot plane served, if any
            image = read_boot_params(self.agent.o.root).image
            return {"image_digest": image} if image else {}
        r = self.agent.slots.report()
        return {
            "image_digest": r.image_digest,
            "slot": r.slot,
            "last_good_digest": r.last_good_digest,
        }

    # -- certificate renewal ----------------------------------------------------------------------

    def maybe_renew(self, force: bool = False) -> None:
        a = self.agent
        if a.creds is None or self._pending_key is not None:
            return
        if force or a.creds.should_renew(a.clock.now()):
            key_pem, csr_pem = new_key_and_csr(a.o.machine_id)
            self._pending_key = key_pem
            self.send(
                pb.AgentMessage(certificate_request=pb.CertificateRequest(csr_pem=csr_pem.decode()))
            )
            log.info("certificate renewal requested machine=%s", a.o.machine_id)

    def install_certificate(self, nc: pb.NewCertificate) -> None:
        a = self.agent
        key_pem, self._pending_key = self._pending_key, None
        if key_pem is None:
            log.warning("unsolicited certificate ignored machine=%s", a.o.machine_id)
            return
        cert = x509.load_pem_x509_certificate(nc.cert_pem.encode())
        key = serialization.load_pem_private_key(key_pem, password=None)
        der, info = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if cert.public_key().public_bytes(der, info) != key.public_key().public_bytes(der, info):
            log.warning("renewed certificate does not match our key machine=%s", a.o.machine_id)
            return
        a.creds = Credentials(key_pem, nc.cert_pem.encode(), nc.ca_pem.encode())
        a.creds_store.save(a.creds)
        log.info("certificate renewed machine=%s not_after=%s", a.o.machine_id, nc.not_after)


def _channel_credentials(creds: Credentials) -> Any:
    return grpc.ssl_channel_credentials(
        root_certificates=creds.ca_pem,
        private_key=creds.key_pem,
        certificate_chain=creds.cert_pem,
    )


async def _outgoing(outq: Outbox) -> AsyncIterator[pb.AgentMessage]:
    while True:
        m = await outq.get()
        if m is None:
            return
        yield m


async def _drain(reader: Any) -> None:
    async for _ in reader:
        pass


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
