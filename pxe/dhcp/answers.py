"""The DHCP answers: which reply (if any) a screened, decided request gets, and its options.

Part of the DHCP server (:mod:`pxe.dhcp.server`). Given a parsed request and the backend's
:class:`~pxe.backend.BootDecision`:

- **ProxyDHCP** (PXE 2.1 section 2.2.2): an OFFER to a DISCOVER, an ACK to a REQUEST (on 67 or
  4011), with no address (yiaddr 0.0.0.0), only the boot target: siaddr, option 67 (and the
  128-byte file field when the name fits), option 60 ``PXEClient``, the client's UUID (option
  97), PXE discovery control (option 43: boot the named file, no menus) or iPXE's
  ``no-pxedhcp`` (option 175).
- **Full mode** (RFC 2131 section 4.3): DISCOVER -> OFFER from the lease store (unknown MACs
  get short offers, a bounded number at once); REQUEST -> ACK if the address may be bound,
  NAK if it was meant for us (server id ours, or an address in our subnet), silence if not;
  RELEASE and DECLINE update the store and get no reply; INFORM -> ACK without an address.
  Lease changes are written to disk shortly after (``flush_delay``), coalesced.

:class:`Answers` is a mixin of :class:`~pxe.dhcp.server.DhcpServer`; it holds no state of its own.
"""

from __future__ import annotations

import asyncio
import contextlib

from pxe.backend import BootDecision
from pxe.dhcp.admission import UnknownOffers
from pxe.dhcp.config import FullModeConfig
from pxe.dhcp.decide import BootConfig, BootTarget, ClientKind, Drop, boot_target
from pxe.dhcp.leases import LeaseStore, ip_int
from pxe.dhcp.packet import (
    IpxeOpt,
    MessageType,
    Op,
    Opt,
    Packet,
    PxeSubOpt,
    encode_tlv,
)


class Answers:
    """Reply building and the full-mode lease state machine, for :class:`DhcpServer`."""

    address: str
    boot: BootConfig
    leases: LeaseStore
    network: FullModeConfig
    unknown_offers: UnknownOffers
    flush_delay: float
    _server_id: bytes
    _lease_opts: dict[int, bytes]
    _net: tuple[int, int]
    _flush: asyncio.TimerHandle | None

    def _reply(
        self,
        pkt: Packet,
        kind: MessageType,
        yiaddr: str,
        target: BootTarget | None,
        extra: dict[int, bytes] | None = None,
    ) -> Packet:
        opts: dict[int, bytes] = {
            Opt.MESSAGE_TYPE: bytes((kind.code,)),
            Opt.SERVER_ID: self._server_id,
        }
        file, siaddr = b"", "0.0.0.0"  # noqa: S104
        if target is not None:
            opts[Opt.VENDOR_CLASS] = target.vendor_class.encode()
            if Opt.CLIENT_UUID in pkt.options:
                opts[Opt.CLIENT_UUID] = pkt.options[Opt.CLIENT_UUID]
            name = target.filename.encode()
            if len(name) <= 127:
                file = name
            # NOTE: iPXE accepts a ProxyDHCP answer only if it has "PXE options": a non-zero
            # siaddr AND option 67 (dhcp_has_pxeopts); the file field alone is not enough.
            opts[Opt.BOOTFILE] = name
            siaddr = target.next_server or self.address
            if target.kind is ClientKind.PXE:
                # PXE discovery control bit 3: boot the file named here, skip boot server
                # discovery and menus (what pixiecore and smee send).
                opts[Opt.VENDOR_SPECIFIC] = encode_tlv([(PxeSubOpt.DISCOVERY_CONTROL, b"\x08")])
            if target.kind is ClientKind.IPXE:
                opts[Opt.IPXE_ENCAP] = encode_tlv([(IpxeOpt.NO_PXEDHCP, b"\x01")])
        if extra:
            opts.update(extra)
        return Packet(
            op=Op.BOOTREPLY,
            xid=pkt.xid,
            chaddr=pkt.chaddr,
            htype=pkt.htype,
            flags=pkt.flags,
            ciaddr=pkt.ciaddr if kind is not MessageType.NAK else "0.0.0.0",  # noqa: S104
            yiaddr=yiaddr,
            siaddr=siaddr,
            giaddr=pkt.giaddr,
            file=file,
            options=opts,
        )

    def _proxy(
        self, pkt: Packet, mt: MessageType, decision: BootDecision
    ) -> tuple[Packet, MessageType] | Drop:
        target = boot_target(pkt, self.boot)
        if isinstance(target, Drop):
            return target
        if not decision.allow_boot:
            return Drop.NOT_ALLOWED
        kind = MessageType.OFFER if mt is MessageType.DISCOVER else MessageType.ACK
        return self._reply(pkt, kind, "0.0.0.0", target), kind  # noqa: S104

    def _lease_options(self) -> dict[int, bytes]:
        return dict(self._lease_opts)

    def _full(
        self, pkt: Packet, mt: MessageType, decision: BootDecision
    ) -> tuple[Packet, MessageType] | Drop | None:
        mac, static = pkt.mac, decision.static_ip
        target: BootTarget | None = None
        if decision.allow_boot:
            t = boot_target(pkt, self.boot)
            target = None if isinstance(t, Drop) else t
        if mt is MessageType.DISCOVER:
            # Unknown MACs get short offers, a bounded number at once (``admission``).
            stranger = not decision.known and static is None and not self.leases.holds(mac)
            now = self.leases.clock()
            if stranger and not self.unknown_offers.may_offer(mac, now):
                return Drop.UNKNOWN_OFFERS
            ip = self.leases.pick(mac, pkt.requested_ip, static)
            if ip is None:
                return Drop.NO_ADDRESS
            if stranger:
                self.leases.offer(mac, ip, self.unknown_offers.seconds)
                self.unknown_offers.offered(mac, now)
            else:
                self.leases.offer(mac, ip)
            return self._reply(
                pkt, MessageType.OFFER, ip, target, self._lease_options()
            ), MessageType.OFFER
        if mt is MessageType.REQUEST:
            sid = pkt.server_id
            if sid is not None and sid != self.address:
                self.leases.forget_offer(mac)
                return Drop.NOT_FOR_US
            wanted = pkt.requested_ip or (None if pkt.ciaddr == "0.0.0.0" else pkt.ciaddr)  # noqa: S104
            if wanted is not None and self.leases.can_bind(mac, wanted, static):
                self.leases.bind(mac, wanted, self.network.lease_seconds)
                self.unknown_offers.forget(mac)
                self._schedule_flush()
                reply = self._reply(pkt, MessageType.ACK, wanted, target, self._lease_options())
                return reply, MessageType.ACK
            if sid is not None or (wanted is not None and self._ours(wanted)):
                return self._reply(pkt, MessageType.NAK, "0.0.0.0", None), MessageType.NAK  # noqa: S104
            return Drop.NOT_FOR_US
        if mt is MessageType.RELEASE:
            self.leases.release(mac)
            self._schedule_flush()
            return None
        if mt is MessageType.DECLINE:
            if pkt.requested_ip:
                self.leases.decline(mac, pkt.requested_ip)
                self._schedule_flush()
            return None
        if mt is MessageType.INFORM:
            return self._reply(pkt, MessageType.ACK, "0.0.0.0", target), MessageType.ACK  # noqa: S104
        return Drop.WRONG_MESSAGE_TYPE

    def _ours(self, ip: str) -> bool:
        return self._net[0] <= ip_int(ip) <= self._net[1]

    def _schedule_flush(self) -> None:
        if self._flush is None:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(self.flush_delay, self._do_flush)

    def _do_flush(self) -> None:
        self._flush = None
        if self.leases.dirty:
            with contextlib.suppress(OSError):
                self.leases.save()
