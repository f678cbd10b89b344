"""asyncio DHCP servers: ProxyDHCP (UDP 67 + 4011) and a `full` authoritative server.

Sockets. A client without an address broadcasts to 255.255.255.255:67. Linux delivers a
broadcast only to sockets bound to the wildcard or to the broadcast address, so, given an
interface, we bind a receive-only socket to 255.255.255.255:67 with SO_BINDTODEVICE (never the
wildcard), and a socket to our own address for unicast (relays, renewals) and for sending.
Replies go (RFC 2131 section 4.1): to the relay (giaddr, port 67) if relayed; to ciaddr if the
client has an address; else broadcast on the interface (SO_BROADCAST + SO_BINDTODEVICE). The
ProxyDHCP REQUEST on port 4011 (PXE 2.1 section 2.2.2) is answered to its source.

Robustness: parsing, screening and admission (`admission`: known MACs first, unknown ones
rate-limited and capped) happen synchronously on arrival; only datagrams worth a backend call
become tasks, capped by `max_inflight`. Every drop has a counter (`Drop`).

This module holds the sockets, the receive path and the lifecycle; what each request is answered
(ProxyDHCP and the full-mode lease state machine) is in `answers` (`Answers`, a mixin).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import time
from typing import Any

from pxe.backend import (
    BootBackend,
    BootDecision,
    BootQuery,
    TimelineEvent,
    TimelineKind,
    TimelineSink,
    decide_now,
    known_macs,
)
from pxe.dhcp.admission import Admission, Traffic, UnknownOffers
from pxe.dhcp.answers import Answers
from pxe.dhcp.config import DhcpStats, FullModeConfig, lease_options
from pxe.dhcp.decide import BootConfig, Drop, Mode, screen
from pxe.dhcp.leases import LeaseStore
from pxe.dhcp.packet import (
    MessageType,
    Opt,
    Packet,
    encode,
    parse,
)
from pxe.dhcp.sockets import udp_socket as _udp_socket
from pxe.errors import MalformedPacket, PxeError

log = logging.getLogger(__name__)

BROADCAST = "255.255.255.255"
_TIMELINE_KIND = {mt: TimelineKind(mt.value) for mt in MessageType}


def _identity(endpoint: _Endpoint) -> _Endpoint:
    return endpoint


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, server: DhcpServer, port4011: bool) -> None:
        self.server, self.port4011 = server, port4011

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.server._on_datagram(data, addr, self.port4011)

    def error_received(self, exc: Exception) -> None:
        log.debug("dhcp socket error error=%s", exc)


class DhcpServer(Answers):
    """One DHCP server (proxy or full) bound to one address (and optionally one interface)."""

    def __init__(
        self,
        *,
        mode: Mode,
        boot: BootConfig,
        backend: BootBackend,
        sink: TimelineSink,
        address: str,
        interface: str | None = None,
        server_port: int = 67,
        client_port: int = 68,
        relay_port: int | None = None,
        pxe_port: int | None = 4011,
        leases: LeaseStore | None = None,
        network: FullModeConfig = FullModeConfig(),
        max_inflight: int = 512,
        flush_delay: float = 0.5,
        admission: Admission | None = None,
        unknown_offers: UnknownOffers | None = None,
        known_refresh: float = 10.0,
    ) -> None:
        self.mode, self.boot, self.backend, self.sink = mode, boot, backend, sink
        self._decide_now = decide_now(backend)
        self.address, self.interface = address, interface
        self.server_port, self.client_port = server_port, client_port
        self.relay_port = relay_port if relay_port is not None else server_port
        self.pxe_port = pxe_port if mode is Mode.PROXY else None
        self.leases = leases if leases is not None else LeaseStore()
        self.network = network
        self.max_inflight, self.flush_delay = max_inflight, flush_delay
        self.stats = DhcpStats()
        self.admission = admission if admission is not None else Admission()
        self.unknown_offers = unknown_offers if unknown_offers is not None else UnknownOffers()
        self.known_refresh = known_refresh
        self._refresher: asyncio.Task[None] | None = None
        self._transports: list[asyncio.DatagramTransport] = []
        self._send: asyncio.DatagramTransport | None = None
        self._send4011: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._flush: asyncio.TimerHandle | None = None
        self._server_id = ipaddress.IPv4Address(address).packed
        self._lease_opts = lease_options(network)
        net = ipaddress.IPv4Network(f"{address}/{network.subnet_mask}", strict=False)
        self._net = (int(net.network_address), int(net.broadcast_address))

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await self._refresh_known_once()
        self._refresher = loop.create_task(self._refresh_known())
        socks: list[tuple[socket.socket, bool, bool]] = [
            (
                _udp_socket(self.address, self.server_port, self.interface, broadcast=True),
                False,
                True,
            )
        ]
        if self.interface:
            socks.append(
                (
                    _udp_socket(BROADCAST, self.server_port, self.interface, broadcast=True),
                    False,
                    False,
                )
            )
        if self.pxe_port:
            socks.append(
                (
                    _udp_socket(self.address, self.pxe_port, self.interface, broadcast=False),
                    True,
                    False,
                )
            )
        for sock, is4011, is_sender in socks:
            endpoint = _Endpoint(self, is4011)
            transport, _ = await loop.create_datagram_endpoint(
                functools.partial(_identity, endpoint), sock=sock
            )
            self._transports.append(transport)
            if is_sender:
                self._send = transport
            if is4011:
                self._send4011 = transport
        log.info(
            "dhcp started mode=%s address=%s interface=%s port=%s",
            self.mode,
            self.address,
            self.interface,
            self.server_port,
        )

    async def _refresh_known_once(self) -> None:
        try:
            macs = await known_macs(self.backend)
        except Exception as exc:  # noqa: BLE001 - keep the last list; decisions still teach
            log.warning("known MAC list not refreshed error=%s", exc)
            return
        if macs is not None:
            self.admission.set_known(macs)

    async def _refresh_known(self) -> None:
        while True:
            await asyncio.sleep(self.known_refresh)
            await self._refresh_known_once()

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        for task in list(self._tasks):
            task.cancel()
        for transport in self._transports:
            transport.close()
        self._transports.clear()
        if self._flush is not None:
            self._flush.cancel()
        if self.leases.dirty:
            self.leases.save()

    # -- receive path --------------------------------------------------------------------------
    def _on_datagram(self, data: bytes, addr: tuple[str, int], port4011: bool) -> None:
        self.stats.received += 1
        try:
            pkt = parse(data)
        except MalformedPacket:
            self.stats.drop(Drop.MALFORMED)
            return
        reason = screen(pkt, self.mode, port4011=port4011)
        if reason is not None:
            self.stats.drop(reason)
            return
        traffic = self.admission.admit(pkt.mac, time.monotonic(), self.leases.holds(pkt.mac))
        if isinstance(traffic, Drop):  # an unknown MAC beyond its share: cheapest possible drop
            self.stats.drop(traffic)
            return
        mt = pkt.message_type
        assert mt is not None  # screen() let it through
        query = BootQuery(
            mac=pkt.mac,
            arch=pkt.arch,
            uuid=pkt.uuid,
            client_ip=None if pkt.ciaddr == "0.0.0.0" else pkt.ciaddr,  # noqa: S104
            ipxe=pkt.is_ipxe,
            vendor_class=pkt.vendor_class,
        )
        decision = self._decided(query)
        if decision is not None:
            # The answer is at hand (a table, a fresh cached decision): reply now, with no task
            # and no loop step, before the next datagram is read.
            self.stats.by_type[mt.value] += 1
            try:
                self._answer(pkt, addr, port4011, mt, decision, emit_request=True)
            except Exception:  # noqa: BLE001 - one request must never stop the server
                log.exception("dhcp handler crashed mac=%s", pkt.mac)
            finally:
                self.admission.done(traffic)
            return
        if len(self._tasks) >= self.max_inflight:
            self.admission.done(traffic)
            self.stats.drop(Drop.OVERLOADED)
            return
        # An ordinary Task per request that must wait for the backend: backends may use
        # anything that needs a current task (httpx/anyio, asyncio.timeout). Stepping the
        # coroutine by hand saved ~10 us per packet and broke exactly those backends.
        task = asyncio.get_running_loop().create_task(
            self._guarded(pkt, addr, port4011, traffic, mt, query)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _decided(self, query: BootQuery) -> BootDecision | None:
        """The backend's answer if it has one at hand (``pxe.backend.decide_now``); None: the
        request waits for ``decide`` in a task."""
        if self._decide_now is None:
            return None
        try:
            return self._decide_now(query)
        except Exception:  # noqa: BLE001 - then ``decide`` is asked (and its failure counted)
            log.exception("backend decide_now crashed mac=%s", query.mac)
            return None

    def _emit(self, kind: TimelineKind, pkt: Packet, **detail: Any) -> None:
        try:
            self.sink(TimelineEvent(kind=kind, mac=pkt.mac, detail=detail))
        except Exception:  # noqa: BLE001 - a sink must never take the server down
            log.exception("timeline sink failed")

    def _emit_request(self, pkt: Packet, mt: MessageType, port4011: bool) -> None:
        self._emit(_TIMELINE_KIND[mt], pkt, arch=pkt.arch.value, port4011=port4011)

    async def _guarded(
        self,
        pkt: Packet,
        addr: tuple[str, int],
        port4011: bool,
        traffic: Traffic,
        mt: MessageType,
        query: BootQuery,
    ) -> None:
        try:
            await self._handle(pkt, addr, port4011, mt, query)
        except Exception:  # noqa: BLE001 - one request must never stop the server
            log.exception("dhcp handler crashed mac=%s", pkt.mac)
        finally:
            self.admission.done(traffic)

    async def _handle(
        self, pkt: Packet, addr: tuple[str, int], port4011: bool, mt: MessageType, query: BootQuery
    ) -> None:
        self.stats.by_type[mt.value] += 1
        self._emit_request(pkt, mt, port4011)
        try:
            decision = await self.backend.decide(query)
        except PxeError as exc:
            log.warning("backend failed mac=%s error=%s", pkt.mac, exc)
            self.stats.drop(Drop.BACKEND_ERROR)
            return
        except Exception:  # noqa: BLE001
            log.exception("backend crashed mac=%s", pkt.mac)
            self.stats.drop(Drop.BACKEND_ERROR)
            return
        self._answer(pkt, addr, port4011, mt, decision, emit_request=False)

    def _answer(
        self,
        pkt: Packet,
        addr: tuple[str, int],
        port4011: bool,
        mt: MessageType,
        decision: BootDecision,
        *,
        emit_request: bool,
    ) -> None:
        """Reply to a decided request. ``emit_request``: the request's timeline event is still
        to be written; it is, after the reply has been sent (the sink sees the same events in
        the same order; the reply does not wait for them)."""
        self.admission.learn(pkt.mac, decision.known, time.monotonic())
        result: tuple[Packet, MessageType] | Drop | None
        if self.mode is Mode.PROXY or port4011:
            result = self._proxy(pkt, mt, decision)
        else:
            result = self._full(pkt, mt, decision)
        if isinstance(result, Drop):
            self.stats.drop(result)
            if emit_request:
                self._emit_request(pkt, mt, port4011)
            if result in (Drop.NOT_ALLOWED, Drop.NO_ADDRESS, Drop.NOT_FOR_US):
                self._emit(TimelineKind.IGNORED, pkt, reason=result.value)
            return
        if result is None:  # RELEASE / DECLINE: no reply by design
            if emit_request:
                self._emit_request(pkt, mt, port4011)
            return
        reply, kind = result
        dest = addr if port4011 else self._destination(pkt, kind)
        transport = self._send4011 if port4011 else self._send
        if transport is None or transport.is_closing():
            if emit_request:
                self._emit_request(pkt, mt, port4011)
            return
        transport.sendto(encode(reply), dest)
        self.stats.answered += 1
        if emit_request:
            self._emit_request(pkt, mt, port4011)
        self._emit(
            _TIMELINE_KIND[kind],
            pkt,
            yiaddr=reply.yiaddr,
            # option 67, not the 128-byte file field: a script URL may not fit the field
            file=reply.options.get(Opt.BOOTFILE, reply.file).decode(),
            to=f"{dest[0]}:{dest[1]}",
        )

    def _destination(self, pkt: Packet, kind: MessageType) -> tuple[str, int]:
        if pkt.giaddr != "0.0.0.0":  # noqa: S104
            return (pkt.giaddr, self.relay_port)
        if pkt.ciaddr != "0.0.0.0" and kind is not MessageType.NAK:  # noqa: S104
            return (pkt.ciaddr, self.client_port)
        return (BROADCAST, self.client_port)
