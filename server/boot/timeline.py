"""The netboot timeline: every DHCP, TFTP and HTTP step of a boot, per MAC.

Writers never wait for the database: ``TimelineWriter.submit`` (and ``sink``, the
``pxe.TimelineSink`` handed to the in-process ``PxeService``) put the event on a bounded queue and
return; a background thread inserts batches and enforces retention (events per MAC, age, total
rows). When the queue is full, events are dropped and counted (``dropped``): the DHCP/TFTP loop
is never slowed by the database. Events without a MAC (a TFTP transfer no DHCP answer explains)
cannot be attributed and are not stored.

HTTP steps are correlated here too (``HttpSteps``): ``/boot.ipxe`` carries the MAC, asset
downloads do not, so the server remembers, per client IP, which MAC fetched which script and
which assets that script names as kernel and initrds.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, func, insert, or_, select
from sqlalchemy.orm import Session

from pxe import TimelineEvent, TimelineKind
from server.inventory.db import Database
from server.inventory.machines import iso
from server.inventory.models import BootTimelineEvent, Event

log = logging.getLogger(__name__)


class HttpKind(StrEnum):
    """Timeline kinds the server itself records (beside ``pxe.TimelineKind``)."""

    SCRIPT = "SCRIPT"
    """``/boot.ipxe`` answered (detail: action, profile, phase, reason)."""
    KERNEL = "KERNEL"
    """The kernel of the machine's script was served (bytes, status, range)."""
    INITRD = "INITRD"
    """An initrd of the machine's script was served."""
    ASSET = "ASSET"
    """Another asset was served to a client whose MAC is known."""
    DISCOVERED = "DISCOVERED"
    """An unknown MAC was recorded as a ``discovered`` machine."""


ALL_KINDS = frozenset({k.value for k in TimelineKind} | {k.value for k in HttpKind})


@dataclass(frozen=True)
class Row:
    mac: str
    kind: str
    at: float
    source: str
    client: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Retention:
    per_mac: int = 200
    days: float = 7.0
    max_rows: int = 100_000


class TimelineWriter:
    """Bounded queue + one background thread writing batches."""

    def __init__(
        self,
        db: Database,
        retention: Retention,
        *,
        maxsize: int = 10_000,
        batch: int = 500,
        prune_every: float = 5.0,
        linger: float = 0.05,
    ) -> None:
        self.db, self.retention = db, retention
        self._q: queue.Queue[Row | None] = queue.Queue(maxsize)
        self._batch, self._prune_every, self._linger = batch, prune_every, linger
        self._thread: threading.Thread | None = None
        self._touched: set[str] = set()
        self.dropped = 0
        self.written = 0

    # -- producers (any thread, never block) --------------------------------------------------

    def submit(self, row: Row) -> bool:
        try:
            self._q.put_nowait(row)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def sink(self, event: TimelineEvent) -> None:
        """A ``pxe.TimelineSink``: returns at once, never raises."""
        if event.mac is None:
            return
        self.submit(
            Row(event.mac, event.kind.value, event.at, "server", event.client, _plain(event.detail))
        )

    # -- the writer thread ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="boot-timeline", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        try:
            self._q.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        last_prune = time.monotonic()
        stopping = False
        while not stopping:
            rows: list[Row] = []
            try:
                item = self._q.get(timeout=1.0)
                if item is None:
                    stopping = True
                else:
                    rows.append(item)
                # Linger a moment: a boot storm's events trickle in, and one transaction per
                # burst costs far less server CPU than one per event.
                deadline = time.monotonic() + self._linger
                while len(rows) < self._batch and not stopping:
                    item = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
                    if item is None:
                        stopping = True
                    else:
                        rows.append(item)
            except queue.Empty:
                pass
            try:
                if rows:
                    self._write(rows)
                if stopping or time.monotonic() - last_prune >= self._prune_every:
                    self.prune()
                    last_prune = time.monotonic()
            except Exception:  # noqa: BLE001 - the writer must survive a database hiccup
                log.exception("boot timeline write failed rows=%d", len(rows))

    def _write(self, rows: Sequence[Row]) -> None:
        with self.db.write() as s:
            s.execute(
                insert(BootTimelineEvent),
                [
                    {
                        "mac": r.mac,
                        "kind": r.kind,
                        "client": r.client,
                        "detail": dict(r.detail),
                        "at": datetime.fromtimestamp(r.at, UTC),
                        "source": r.source,
                    }
                    for r in rows
                ],
            )
        self.written += len(rows)
        self._touched.update(r.mac for r in rows)

    def prune(self) -> None:
        touched, self._touched = self._touched, set()
        with self.db.write() as s:
            prune(s, self.retention, touched, datetime.now(UTC))


def prune(s: Session, r: Retention, macs: set[str], now: datetime) -> None:
    """Retention: per touched MAC, then by age, then the total."""
    t = BootTimelineEvent
    for mac in macs:
        cut = s.scalar(
            select(t.id).where(t.mac == mac).order_by(t.id.desc()).offset(r.per_mac).limit(1)
        )
        if cut is not None:
            s.execute(delete(t).where(t.mac == mac, t.id <= cut))
    s.execute(delete(t).where(t.at < now - timedelta(days=r.days)))
    top = s.scalar(select(func.max(t.id)))
    if top is not None and top > r.max_rows:
        s.execute(delete(t).where(t.id <= top - r.max_rows))


def read(s: Session, macs: Sequence[str], limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` events of these MACs, oldest first."""
    if not macs:
        return []
    t = BootTimelineEvent
    rows = s.scalars(select(t).where(t.mac.in_(macs)).order_by(t.id.desc()).limit(limit)).all()
    return [
        {
            "id": e.id,
            "at": iso(e.at),
            "mac": e.mac,
            "kind": e.kind,
            "client": e.client,
            "detail": e.detail,
            "source": e.source,
        }
        for e in reversed(rows)
    ]


STORY_GROUPS = ("rollout.", "agent.", "power.", "boot-device.")
"""Machine events that belong in its boot story: provisioning and upgrade steps, enrollment and
agent trouble, power and boot-device changes."""


def with_events(
    s: Session, machine_id: str, items: list[dict[str, Any]], limit: int
) -> list[dict[str, Any]]:
    """The boot steps merged with the machine's story events (``source: event``, ``detail``:
    the message and the event's data), newest ``limit`` of both, oldest first: one story from
    power-on to ready."""
    e = Event
    rows = s.scalars(
        select(e)
        .where(e.machine_id == machine_id, or_(*(e.kind.startswith(g) for g in STORY_GROUPS)))
        .order_by(e.id.desc())
        .limit(limit)
    ).all()
    events = [
        {
            "id": None,
            "at": iso(r.created_at),
            "mac": None,
            "kind": r.kind,
            "client": None,
            "detail": {"message": r.message, **_plain(r.data or {})},
            "source": "event",
        }
        for r in rows
    ]
    merged = sorted([*items, *events], key=_instant)
    return merged[-limit:]


def _instant(item: dict[str, Any]) -> datetime:
    at = item["at"]
    return (
        datetime.fromisoformat(at.replace("Z", "+00:00"))
        if at
        else datetime.min.replace(tzinfo=UTC)
    )


def _plain(detail: Mapping[str, object]) -> dict[str, Any]:
    """JSON-safe copy (numbers, strings, booleans, None; anything else as str)."""
    out: dict[str, Any] = {}
    for k, v in detail.items():
        out[str(k)] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out


class HttpSteps:
    """Client IP -> (MAC, asset name -> KERNEL/INITRD) from the last script served to it."""

    def __init__(self, limit: int = 65536) -> None:
        self.limit = limit
        self._by_ip: dict[str, tuple[str, dict[str, HttpKind]]] = {}

    def script_served(self, ip: str, mac: str, kernel: str | None, initrds: Sequence[str]) -> None:
        roles = {name: HttpKind.INITRD for name in initrds}
        if kernel:
            roles[kernel] = HttpKind.KERNEL
        if len(self._by_ip) >= self.limit:
            self._by_ip.clear()
        self._by_ip[ip] = (mac, roles)

    def asset_served(self, ip: str, name: str) -> tuple[str | None, HttpKind]:
        hit = self._by_ip.get(ip)
        if hit is None:
            return None, HttpKind.ASSET
        return hit[0], hit[1].get(name, HttpKind.ASSET)
