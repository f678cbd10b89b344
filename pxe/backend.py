"""What the boot plane asks the control plane: `BootBackend` and `TimelineSink`.

`pxe` never imports the server. When a machine's firmware broadcasts a PXE DISCOVER, the DHCP
server builds a `BootQuery` (MAC, SMBIOS UUID, architecture, ...) and asks the backend for a
`BootDecision`: is the machine known, may it boot, which fixed address does it get (full mode).
`StaticBackend` answers from a table (tests, a standalone lab); `HttpBackend` asks a central
bronze server over REST (see docs/pxe.md for the JSON shape), so a per-rack `bronze pxe` process
can run apart from the server. `CachedBackend` (applied by `PxeService`) reuses an answer for a
few seconds: a boot asks the same question several times (DISCOVER, REQUEST, retransmissions).

Every step of a boot (DHCP exchange, TFTP transfer) is reported to a `TimelineSink`, a plain
callable that must not block (the server queues the events it wants to persist).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

import httpx

from pxe.dhcp.packet import Arch
from pxe.errors import BackendError

log = logging.getLogger(__name__)

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def normalize_mac(mac: str) -> str:
    """Lower-case, colon-separated; raises ValueError for anything else."""
    m = mac.strip().lower().replace("-", ":")
    if not _MAC_RE.fullmatch(m):
        raise ValueError(f"not a MAC address: {mac!r}")
    return m


@dataclass(frozen=True)
class BootQuery:
    """What the firmware told us about itself."""

    mac: str
    arch: Arch = Arch.BIOS
    uuid: str | None = None
    client_ip: str | None = None
    ipxe: bool = False
    vendor_class: str | None = None


@dataclass(frozen=True)
class BootDecision:
    """The control plane's answer. The default is the safe one: unknown, no boot."""

    known: bool = False
    allow_boot: bool = False
    static_ip: str | None = None
    hostname: str | None = None


@runtime_checkable
class BootBackend(Protocol):
    """Decides what a machine may do when it network-boots. A backend may also offer
    ``async def known_macs(self) -> frozenset[str] | None`` (see ``known_macs``) and
    ``def decide_now(self, query) -> BootDecision | None`` (see ``decide_now``)."""

    async def decide(self, query: BootQuery) -> BootDecision: ...


class TimelineKind(StrEnum):
    """What happened, as reported to the timeline."""

    DISCOVER = "DISCOVER"
    """A DHCP DISCOVER arrived."""
    OFFER = "OFFER"
    """We sent an OFFER (full) or a proxy OFFER."""
    REQUEST = "REQUEST"
    """A DHCP REQUEST arrived (port 67 or 4011)."""
    ACK = "ACK"
    """We acknowledged a lease or a ProxyDHCP request."""
    NAK = "NAK"
    """We refused a requested address."""
    RELEASE = "RELEASE"
    """A client released its lease."""
    DECLINE = "DECLINE"
    """A client declined an address (in use)."""
    INFORM = "INFORM"
    """A client asked for parameters only."""
    IGNORED = "IGNORED"
    """A request we chose not to answer (unknown machine, not allowed)."""
    TFTP_START = "TFTP_START"
    """A TFTP read began."""
    TFTP_COMPLETE = "TFTP_COMPLETE"
    """A TFTP read finished: every block acknowledged."""
    TFTP_ABORTED = "TFTP_ABORTED"
    """A TFTP read ended early (timeout, client error)."""
    TFTP_REFUSED = "TFTP_REFUSED"
    """A TFTP request was refused (not found, outside the root, write)."""


@dataclass(frozen=True)
class TimelineEvent:
    """One step of one machine's boot. `mac` is None where the protocol has no MAC (TFTP)."""

    kind: TimelineKind
    mac: str | None = None
    client: str | None = None
    detail: Mapping[str, object] = field(default_factory=dict)
    at: float = field(default_factory=time.time)


class TimelineSink(Protocol):
    """Receives timeline events. Must return quickly and never raise."""

    def __call__(self, event: TimelineEvent) -> None: ...


def null_sink(event: TimelineEvent) -> None:
    """A sink that drops everything."""


class ListSink:
    """A sink that keeps events in memory (tests, debugging)."""

    def __init__(self) -> None:
        self.events: list[TimelineEvent] = []

    def __call__(self, event: TimelineEvent) -> None:
        self.events.append(event)

    def kinds(self, mac: str | None = None) -> list[TimelineKind]:
        return [e.kind for e in self.events if mac is None or e.mac == mac]


async def known_macs(backend: object) -> frozenset[str] | None:
    """``backend.known_macs()`` when the backend offers it: every MAC it would call known, so
    the DHCP server can answer those first during a flood of unknown MACs. None: no list."""
    lister = getattr(backend, "known_macs", None)
    if lister is None:
        return None
    result: frozenset[str] | None = await lister()
    return result


def decide_now(backend: object) -> Callable[[BootQuery], BootDecision | None] | None:
    """``backend.decide_now`` when the backend offers it: the answer it has at hand without
    waiting (a table, a fresh cached answer), or None when ``decide`` must be awaited. The DHCP
    server then answers on arrival, with no task and no loop step per request; a backend whose
    every answer needs I/O simply does not offer it."""
    peek: Callable[[BootQuery], BootDecision | None] | None = getattr(backend, "decide_now", None)
    return peek


class StaticBackend:
    """Answers from a fixed table of MAC -> decision; unknown MACs get `default`."""

    def __init__(
        self,
        machines: Mapping[str, BootDecision] | None = None,
        default: BootDecision | None = None,
    ) -> None:
        self.machines = {normalize_mac(k): v for k, v in (machines or {}).items()}
        self.default = default if default is not None else BootDecision()
        self.queries: list[BootQuery] = []

    async def decide(self, query: BootQuery) -> BootDecision:
        return self.decide_now(query)

    def decide_now(self, query: BootQuery) -> BootDecision:
        """The table's answer, at once (``decide_now``)."""
        self.queries.append(query)
        return self.machines.get(query.mac, self.default)

    async def known_macs(self) -> frozenset[str] | None:
        """The table's known MACs (``pxe.dhcp.admission``); None when every MAC is known."""
        if self.default.known:
            return None
        return frozenset(m for m, d in self.machines.items() if d.known)


class HttpBackend:
    """Asks the central server: ``GET {base}/api/v1/boot/decide?mac=..&arch=..`` (bearer token).

    A 404 means "unknown machine" (a valid answer); other failures raise `BackendError`, which the
    DHCP server counts and treats as "do not answer" (the firmware will retry).
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 2.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._url = base_url.rstrip("/") + "/api/v1/boot/decide"
        self._headers = {"Authorization": f"Bearer {token}"}
        self._client = client or httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def decide(self, query: BootQuery) -> BootDecision:
        params = {"mac": query.mac, "arch": query.arch.value, "ipxe": str(query.ipxe).lower()}
        if query.uuid:
            params["uuid"] = query.uuid
        if query.client_ip:
            params["ip"] = query.client_ip
        try:
            resp = await self._client.get(self._url, params=params, headers=self._headers)
        except httpx.HTTPError as exc:
            raise BackendError(f"boot backend unreachable: {type(exc).__name__}") from exc
        if resp.status_code == 404:
            decision = BootDecision()
        elif resp.status_code != 200:
            raise BackendError(f"boot backend answered HTTP {resp.status_code}")
        else:
            decision = decision_from_json(resp.json())
        return decision

    async def aclose(self) -> None:
        await self._client.aclose()


class CachedBackend:
    """Wraps a backend: an answer is reused for `seconds` for the same query, and identical
    queries asked while one is in flight share that one call. Errors are not kept.

    One iPXE boot asks the same question for its DISCOVER and its REQUEST, and firmware under
    load retransmits; each question is a database read (in `bronze serve`) or an HTTP round trip
    (`bronze pxe`). A changed decision (a machine put in maintenance) applies after at most
    `seconds`. At most `limit` answers are kept (the table is emptied when full).
    """

    def __init__(
        self,
        backend: BootBackend,
        seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        limit: int = 4096,
    ) -> None:
        self.backend, self.seconds, self.clock, self.limit = backend, seconds, clock, limit
        self._answers: dict[BootQuery, tuple[float, BootDecision]] = {}
        self._inflight: dict[BootQuery, asyncio.Task[BootDecision]] = {}

    def decide_now(self, query: BootQuery) -> BootDecision | None:
        """A fresh cached answer, or None (``decide_now``): the wrapped backend is not asked."""
        hit = self._answers.get(query)
        if hit is not None and self.clock() - hit[0] < self.seconds:
            return hit[1]
        return None

    async def decide(self, query: BootQuery) -> BootDecision:
        hit = self.decide_now(query)
        if hit is not None:
            return hit
        task = self._inflight.get(query)
        if task is None:
            task = asyncio.ensure_future(self._ask(query))
            # retrieved here so that an error nobody waits for anymore is not logged as lost
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._inflight[query] = task
        return await asyncio.shield(task)  # one caller giving up does not cancel the others

    async def known_macs(self) -> frozenset[str] | None:
        """The wrapped backend's list of known MACs, if it has one (``pxe.dhcp.admission``)."""
        return await known_macs(self.backend)

    async def _ask(self, query: BootQuery) -> BootDecision:
        try:
            decision = await self.backend.decide(query)
        finally:
            del self._inflight[query]
        if len(self._answers) >= self.limit:
            self._answers.clear()
        self._answers[query] = (self.clock(), decision)
        return decision


def decision_from_json(data: object) -> BootDecision:
    """Validates the server's JSON (see docs/pxe.md); raises `BackendError` on a bad shape."""
    if not isinstance(data, dict):
        raise BackendError("boot backend answer is not an object")
    known, allow = data.get("known", False), data.get("allow_boot", False)
    ip, hostname = data.get("static_ip"), data.get("hostname")
    if not isinstance(known, bool) or not isinstance(allow, bool):
        raise BackendError("known/allow_boot must be booleans")
    if ip is not None and not isinstance(ip, str):
        raise BackendError("static_ip must be a string or null")
    if hostname is not None and not isinstance(hostname, str):
        raise BackendError("hostname must be a string or null")
    if ip is not None:
        import ipaddress

        try:
            ipaddress.IPv4Address(ip)
        except ValueError as exc:
            raise BackendError("static_ip is not an IPv4 address") from exc
    return BootDecision(known=known, allow_boot=allow, static_ip=ip, hostname=hostname)
