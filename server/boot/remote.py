"""``bronze pxe --server URL``: the boot plane as its own process, next to a rack.

DHCP and TFTP run here (``pxe.PxeService``); decisions come from the central server over HTTP
(``pxe.HttpBackend`` -> ``GET /api/v1/boot/decide``), and every timeline event is batched and
posted to ``POST /api/v1/boot/timeline`` by ``HttpTimelineSink``. Both use a token of role
``boot``, read from ``--token-file`` or ``BRONZE_PXE_TOKEN``, never from argv.

The sink never blocks the DHCP/TFTP loop: events go into a bounded buffer (overflow is dropped
and counted); a task posts them every ``interval`` seconds. If the server is unreachable, the
batch is kept (up to the buffer bound) and retried later: after each failed post the wait
doubles (``interval`` up to ``max_interval``, 60 s) and a success brings it back, so a wrong
token or a server that is down costs one log line per minute, not two per second.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
from typing import Any

import httpx

from pxe import (
    HttpBackend,
    PxeService,
    PxeSettings,
    TimelineEvent,
    TimelineKind,
)

log = logging.getLogger(__name__)


def next_delay(current: float, ok: bool, base: float, cap: float) -> float:
    """Pure: the wait before the next post: ``base`` after a success, doubled (up to ``cap``)
    after a failure."""
    return base if ok else min(cap, max(current, base) * 2)


class HttpTimelineSink:
    """A ``pxe.TimelineSink`` that posts batches to the central server."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        limit: int = 10_000,
        batch: int = 500,
        interval: float = 0.5,
        max_interval: float = 60.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._url = base_url.rstrip("/") + "/api/v1/boot/timeline"
        self._headers = {"Authorization": f"Bearer {token}"}
        self._client = client or httpx.AsyncClient(timeout=5.0, follow_redirects=False)
        self._buf: collections.deque[dict[str, Any]] = collections.deque()
        self.limit, self.batch, self.interval = limit, batch, interval
        self.max_interval, self.delay, self.failures = max_interval, interval, 0
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.posted = 0
        self._kick = asyncio.Event()

    def __call__(self, event: TimelineEvent) -> None:
        if event.mac is None:
            return  # TFTP without a DHCP answer to explain it: nothing to attribute it to
        if len(self._buf) >= self.limit:
            self.dropped += 1
            return
        detail = {
            k: v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
            for k, v in event.detail.items()
        }
        self._buf.append(
            {
                "kind": event.kind.value,
                "mac": event.mac,
                "client": event.client,
                "detail": detail,
                "at": event.at,
            }
        )
        if event.kind in (TimelineKind.ACK, TimelineKind.OFFER) and "boot=" in str(
            detail.get("file", "")
        ):
            # The server binds the machine's enrollment token to this answer (docs/boot.md) and
            # iPXE asks for its script right after it: post now, not at the next interval.
            self._kick.set()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.delay)
            self._kick.clear()
            ok = await self.flush()
            self.failures = 0 if ok else self.failures + 1
            self.delay = next_delay(self.delay, ok, self.interval, self.max_interval)

    async def flush(self) -> bool:
        """Post what is buffered; False when a post failed (the rest is kept)."""
        while self._buf:
            n = min(self.batch, len(self._buf))
            events = [self._buf[i] for i in range(n)]
            try:
                resp = await self._client.post(
                    self._url, json={"events": events}, headers=self._headers
                )
            except httpx.HTTPError as exc:
                log.warning(
                    "timeline post failed url=%s error=%s kept=%d",
                    self._url,
                    type(exc).__name__,
                    len(self._buf),
                )
                return False
            if resp.status_code == 422:
                log.error("timeline batch refused by the server (422); %d events dropped", n)
            elif resp.status_code != 202:
                log.warning(
                    "timeline post answered HTTP %d; kept=%d next_try_s=%g",
                    resp.status_code,
                    len(self._buf),
                    next_delay(self.delay, False, self.interval, self.max_interval),
                )
                return False
            for _ in range(n):
                self._buf.popleft()
            self.posted += n
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), 5)
        await self._client.aclose()


async def run(settings: PxeSettings, server_url: str, token: str) -> None:
    """Serve until SIGINT/SIGTERM."""
    sink = HttpTimelineSink(server_url, token)
    service = PxeService(settings, HttpBackend(server_url, token), sink)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await sink.start()
    try:
        await service.start()
        log.info(
            "bronze pxe serving mode=%s address=%s interface=%s server=%s",
            settings.mode.value,
            settings.address,
            settings.interface,
            server_url,
        )
        await stop.wait()
    finally:
        await service.stop()
        await sink.stop()
