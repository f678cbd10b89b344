"""`PxeService`: the boot plane as one start/stop unit (DHCP in the configured mode + TFTP).

Used by `bronze serve` (in-process, with a backend that reads the database directly) and by
`bronze pxe --server URL --token T` (a per-rack process with an `HttpBackend`). Settings come
from `PxeSettings` (env prefix ``BRONZE_PXE_``), built once by the caller and passed in.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pxe.backend import (
    BootBackend,
    CachedBackend,
    HttpBackend,
    TimelineEvent,
    TimelineKind,
    TimelineSink,
    null_sink,
)
from pxe.dhcp.admission import Admission, UnknownOffers
from pxe.dhcp.decide import BootConfig, BootFiles, Mode
from pxe.dhcp.leases import LeaseStore
from pxe.dhcp.server import DhcpServer, FullModeConfig
from pxe.tftp.server import TftpServer

log = logging.getLogger(__name__)


class PxeSettings(BaseSettings):
    """Boot plane settings. Every address is explicit: nothing binds the wildcard."""

    model_config = SettingsConfigDict(env_prefix="BRONZE_PXE_", extra="ignore")

    enabled: bool = False
    mode: Mode = Mode.PROXY
    interface: str | None = None
    address: str = "127.0.0.1"
    http_base_url: str = "http://127.0.0.1:8080"
    dhcp_port: int = 67
    dhcp_client_port: int = 68
    proxy_port: int = 4011
    tftp_enabled: bool = True
    tftp_port: int = 69
    tftp_root: Path = Path("/usr/lib/ipxe")
    tftp_max_sessions: int = Field(default=1000, ge=1)
    tftp_timeout: float = Field(default=1.0, gt=0)
    tftp_retries: int = Field(default=5, ge=0)
    dhcp_unknown_rate: float = Field(default=50.0, ge=0)
    """DHCP requests per second from MACs the backend does not know (0: unlimited)."""
    dhcp_unknown_burst: int = Field(default=100, ge=1)
    """Unknown-MAC requests admitted at once before ``dhcp_unknown_rate`` applies."""
    dhcp_unknown_inflight: int = Field(default=32, ge=1)
    """Unknown-MAC requests being decided at once (the rest of ``max_inflight`` is for known)."""
    dhcp_unknown_offers: int = Field(default=64, ge=0)
    """Full mode: pool offers to unknown MACs outstanding at once."""
    dhcp_unknown_offer_seconds: float = Field(default=5.0, gt=0)
    """Full mode: how long a pool offer to an unknown MAC holds its address (known: 30 s)."""
    dhcp_known_refresh: float = Field(default=10.0, gt=0)
    """Seconds between refreshes of the backend's list of known MACs."""
    tftp_client_max_sessions: int = Field(default=8, ge=0)
    """Transfers in flight at once per client address (0: only ``tftp_max_sessions``)."""
    tftp_client_rate: float = Field(default=20.0, ge=0)
    """Requests per second per client address on the TFTP port (0: unlimited)."""
    tftp_client_burst: int = Field(default=40, ge=1)
    """Requests a client address may send at once before ``tftp_client_rate`` applies."""
    decision_cache_seconds: float = Field(default=5.0, ge=0)
    bios_file: str = "undionly.kpxe"
    uefi_x64_file: Literal["snponly.efi", "ipxe.efi"] | str = "snponly.efi"
    uefi_arm64_file: str | None = None
    pool_start: str | None = None
    pool_end: str | None = None
    subnet_mask: str = "255.255.255.0"
    router: str | None = None
    lease_seconds: int = Field(default=3600, ge=60)
    state_dir: Path | None = None
    server_url: str | None = None
    token: SecretStr | None = None

    @field_validator("address", "pool_start", "pool_end", "subnet_mask", "router")
    @classmethod
    def _ipv4(cls, v: str | None) -> str | None:
        if v is not None:
            ipaddress.IPv4Address(v)
            if v == "0.0.0.0":  # noqa: S104
                raise ValueError("the wildcard address is not allowed; give an interface address")
        return v

    @model_validator(mode="after")
    def _pool(self) -> PxeSettings:
        if (self.pool_start is None) != (self.pool_end is None):
            raise ValueError("pool_start and pool_end go together")
        return self


class MacCorrelator:
    """Wraps a sink: TFTP events (which know only "ip:port") get the MAC that DHCP gave or
    answered that address (ACK/OFFER yiaddr, or the unicast destination of a ProxyDHCP ACK)."""

    def __init__(self, sink: TimelineSink, limit: int = 65536) -> None:
        self.sink, self.limit = sink, limit
        self.by_ip: dict[str, str] = {}

    def __call__(self, event: TimelineEvent) -> None:
        if event.mac is not None and event.kind in (TimelineKind.OFFER, TimelineKind.ACK):
            ip = str(event.detail.get("yiaddr") or "")
            if ip in ("", "0.0.0.0"):  # noqa: S104
                ip = str(event.detail.get("to") or "").rsplit(":", 1)[0]
            if ip and ip not in ("0.0.0.0", "255.255.255.255"):  # noqa: S104
                if len(self.by_ip) >= self.limit:
                    self.by_ip.clear()
                self.by_ip[ip] = event.mac
        elif event.mac is None and event.client:
            mac = self.by_ip.get(event.client.rsplit(":", 1)[0])
            if mac is not None:
                event = dataclasses.replace(event, mac=mac)
        self.sink(event)


class PxeService:
    """Owns the DHCP and TFTP servers for one provisioning interface."""

    def __init__(
        self,
        settings: PxeSettings,
        backend: BootBackend | None = None,
        sink: TimelineSink = null_sink,
    ) -> None:
        if backend is None:
            if not settings.server_url or settings.token is None:
                raise ValueError("no backend given and no server_url/token to build one")
            backend = HttpBackend(settings.server_url, settings.token.get_secret_value())
        sink = MacCorrelator(sink)
        self.settings, self.backend, self.sink = settings, backend, sink
        asker: BootBackend = backend
        if settings.decision_cache_seconds > 0:
            asker = CachedBackend(backend, settings.decision_cache_seconds)
        self.dhcp = _dhcp_server(settings, asker, sink)
        self.tftp: TftpServer | None = None
        if settings.tftp_enabled:
            self.tftp = _tftp_server(settings, sink)

    async def start(self) -> None:
        if self.tftp is not None:
            await self.tftp.start()
        try:
            await self.dhcp.start()
        except BaseException:
            if self.tftp is not None:
                await self.tftp.stop()
            raise

    async def stop(self) -> None:
        await self.dhcp.stop()
        if self.tftp is not None:
            await self.tftp.stop()
        close = getattr(self.backend, "aclose", None)
        if close is not None:
            await close()

    async def __aenter__(self) -> PxeService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _dhcp_server(s: PxeSettings, backend: BootBackend, sink: TimelineSink) -> DhcpServer:
    """The DHCP server the settings describe, asking ``backend``."""
    boot = BootConfig(
        server_ip=s.address,
        http_base_url=s.http_base_url,
        files=BootFiles(bios=s.bios_file, uefi_x64=s.uefi_x64_file, uefi_arm64=s.uefi_arm64_file),
    )
    pool = (s.pool_start, s.pool_end) if s.pool_start and s.pool_end else None
    lease_file = s.state_dir / "leases.json" if s.state_dir else None
    return DhcpServer(
        mode=s.mode,
        boot=boot,
        backend=backend,
        sink=sink,
        address=s.address,
        interface=s.interface,
        server_port=s.dhcp_port,
        client_port=s.dhcp_client_port,
        pxe_port=s.proxy_port,
        leases=LeaseStore(lease_file, pool),
        network=FullModeConfig(
            subnet_mask=s.subnet_mask, router=s.router, lease_seconds=s.lease_seconds
        ),
        admission=Admission(
            unknown_rate=s.dhcp_unknown_rate,
            unknown_burst=s.dhcp_unknown_burst,
            unknown_inflight=s.dhcp_unknown_inflight,
        ),
        unknown_offers=UnknownOffers(s.dhcp_unknown_offers, s.dhcp_unknown_offer_seconds),
        known_refresh=s.dhcp_known_refresh,
    )


def _tftp_server(s: PxeSettings, sink: TimelineSink) -> TftpServer:
    """The TFTP server the settings describe."""
    return TftpServer(
        s.tftp_root,
        address=s.address,
        port=s.tftp_port,
        sink=sink,
        max_sessions=s.tftp_max_sessions,
        timeout=s.tftp_timeout,
        retries=s.tftp_retries,
        client_max_sessions=s.tftp_client_max_sessions,
        client_rate=s.tftp_client_rate,
        client_burst=s.tftp_client_burst,
        interface=s.interface,
    )
