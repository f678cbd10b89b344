"""Pure decisions of the DHCP servers: answer or drop, and which boot file to hand out.

The boot chain (tinkerbell smee, pixiecore, matchbox all do the same):

1. Firmware PXE (BIOS option ROM or UEFI) sends a DISCOVER with vendor class ``PXEClient`` and
   its architecture in option 93. It can only speak TFTP, so it gets an iPXE binary:
   BIOS -> ``undionly.kpxe``; x86-64 UEFI -> ``snponly.efi`` (or ``ipxe.efi``); ARM64 UEFI -> a
   configured binary, or no answer. UEFI HTTP boot (vendor class ``HTTPClient``, arch 16) gets
   an HTTP URL and must see ``HTTPClient`` echoed in option 60.
2. iPXE (user class ``iPXE`` or option 175 present) runs the DHCP dance again; now it gets the
   HTTP URL of its script directly, so it never loops back to step 1.

In `proxy` mode (PXE spec section 2.2.1) another server hands out addresses; we answer PXE
clients only and never put an address in yiaddr. In `full` mode we are the DHCP server of an
isolated provisioning network and also answer non-PXE clients (the booted OS).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote

from pxe.dhcp.packet import Arch, MessageType, Op, Packet


class Mode(StrEnum):
    """How the DHCP server takes part in the network."""

    PROXY = "proxy"
    """ProxyDHCP: boot parameters only, beside the site's DHCP server."""
    FULL = "full"
    """Authoritative server of an isolated provisioning network: addresses + boot."""


class Drop(StrEnum):
    """Why a datagram got no answer (counter names)."""

    MALFORMED = "malformed"
    """The codec refused it."""
    NOT_REQUEST = "not_request"
    """op is BOOTREPLY or unknown."""
    NO_MESSAGE_TYPE = "no_message_type"
    """Plain BOOTP (no option 53)."""
    WRONG_MESSAGE_TYPE = "wrong_message_type"
    """A type this server/port does not answer."""
    NOT_PXE = "not_pxe"
    """No PXEClient/HTTPClient vendor class (proxy mode)."""
    UNSUPPORTED_ARCH = "unsupported_arch"
    """No boot file configured for the client's architecture."""
    NOT_ALLOWED = "not_allowed"
    """The backend said the machine may not boot."""
    NOT_FOR_US = "not_for_us"
    """REQUEST naming another server, or a lease we do not hold."""
    NO_ADDRESS = "no_address"
    """Full mode: no reservation and the pool is exhausted or absent."""
    BACKEND_ERROR = "backend_error"
    """The backend failed; the firmware will retry."""
    OVERLOADED = "overloaded"
    """Too many requests in flight."""
    UNKNOWN_RATE = "unknown_rate"
    """A MAC the backend does not know, beyond the rate for unknown MACs (``admission``)."""
    UNKNOWN_BUSY = "unknown_busy"
    """A MAC the backend does not know while ``unknown_inflight`` of them are being decided."""
    UNKNOWN_OFFERS = "unknown_offers"
    """Full mode: ``unknown_offers`` pool offers to unknown MACs are already outstanding."""


class ClientKind(StrEnum):
    """What kind of network boot client sent the request."""

    PXE = "pxe"
    """Firmware PXE (TFTP only)."""
    HTTP = "http"
    """UEFI HTTP boot."""
    IPXE = "ipxe"
    """iPXE, which can fetch HTTP."""
    OTHER = "other"
    """Not a boot client (an OS's DHCP client)."""


@dataclass(frozen=True)
class BootFiles:
    """Binaries served over TFTP to firmware, by architecture."""

    bios: str = "undionly.kpxe"
    uefi_x64: str = "snponly.efi"
    uefi_arm64: str | None = None
    http_x64: str = "ipxe.efi"  # fetched over HTTP by UEFI HTTP boot clients


@dataclass(frozen=True)
class BootConfig:
    """Where the boot files and the iPXE script live."""

    server_ip: str
    http_base_url: str
    files: BootFiles = BootFiles()
    script_path: str = "/boot.ipxe"


@dataclass(frozen=True)
class BootTarget:
    """What to put in the reply: file (and siaddr for TFTP), option 60 to echo, iPXE flags."""

    filename: str
    next_server: str | None
    vendor_class: str
    kind: ClientKind


def client_kind(pkt: Packet) -> ClientKind:
    vc = pkt.vendor_class or ""
    if pkt.is_ipxe:
        return ClientKind.IPXE
    if vc.startswith("HTTPClient") or pkt.arch in (Arch.HTTP_X64, Arch.HTTP_ARM64):
        return ClientKind.HTTP
    if vc.startswith("PXEClient"):
        return ClientKind.PXE
    return ClientKind.OTHER


def screen(pkt: Packet, mode: Mode, *, port4011: bool = False) -> Drop | None:
    """First gate, before any backend call: None means "worth deciding on"."""
    if pkt.op != Op.BOOTREQUEST:
        return Drop.NOT_REQUEST
    mt = pkt.message_type
    if mt is None:
        return Drop.NO_MESSAGE_TYPE
    if port4011:
        if mt not in (MessageType.REQUEST, MessageType.INFORM):
            return Drop.WRONG_MESSAGE_TYPE
    elif mode is Mode.PROXY and mt is not MessageType.DISCOVER:
        # NOTE: in proxy mode the REQUEST on port 67 belongs to the site's DHCP server; the
        # PXE client sends its ProxyDHCP REQUEST to port 4011.
        return Drop.WRONG_MESSAGE_TYPE
    elif mt in (MessageType.OFFER, MessageType.ACK, MessageType.NAK):
        return Drop.WRONG_MESSAGE_TYPE
    if mode is Mode.PROXY or port4011:
        vc = pkt.vendor_class or ""
        if not (vc.startswith("PXEClient") or vc.startswith("HTTPClient")):
            return Drop.NOT_PXE
    return None


def script_url(cfg: BootConfig, pkt: Packet) -> str:
    """The iPXE script URL; literal values we know, so no iPXE expansion is needed. ``boot``
    names this boot (the DHCP transaction id, the same in DISCOVER and REQUEST): the server binds
    the enrollment token it hands out to it (docs/boot.md)."""
    q = f"mac={quote(pkt.mac)}&arch={pkt.arch.value}"
    if pkt.uuid:
        q += f"&uuid={pkt.uuid}"
    q += f"&boot={pkt.xid:08x}"
    return f"{cfg.http_base_url.rstrip('/')}{cfg.script_path}?{q}"


def boot_target(pkt: Packet, cfg: BootConfig) -> BootTarget | Drop:
    """Which file a boot client gets, by client kind and architecture (table-tested)."""
    kind = client_kind(pkt)
    if kind is ClientKind.OTHER:
        return Drop.NOT_PXE
    if kind is ClientKind.IPXE:
        return BootTarget(script_url(cfg, pkt), None, "PXEClient", kind)
    if kind is ClientKind.HTTP:
        if pkt.arch is not Arch.HTTP_X64:
            return Drop.UNSUPPORTED_ARCH
        url = f"{cfg.http_base_url.rstrip('/')}/{cfg.files.http_x64}"
        return BootTarget(url, None, "HTTPClient", kind)
    arch = pkt.arch
    if arch is Arch.BIOS:
        name: str | None = cfg.files.bios
    elif arch is Arch.UEFI_X64:
        name = cfg.files.uefi_x64
    elif arch is Arch.UEFI_ARM64:
        name = cfg.files.uefi_arm64
    else:
        name = None
    if name is None:
        return Drop.UNSUPPORTED_ARCH
    return BootTarget(name, cfg.server_ip, "PXEClient", kind)
