"""HttpBackend against a real HTTP server on 127.0.0.1; settings; PxeService on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from pxe.backend import (
    BootDecision,
    BootQuery,
    CachedBackend,
    HttpBackend,
    ListSink,
    StaticBackend,
)
from pxe.dhcp.decide import Mode
from pxe.dhcp.packet import Arch, MessageType
from pxe.errors import BackendError
from pxe.service import PxeService, PxeSettings
from tests.peers.netlab import LoopThread
from tests.support.ports import free_udp_port as free_port
from tests.support.pxe import Client, pxe_request
from tests.support.wait import eventually

TOKEN = "t0ken-for-tests"  # noqa: S105


class Fake:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str], str | None]] = []
        self.answers: dict[str, tuple[int, bytes]] = {}


@pytest.fixture
def api() -> Iterator[tuple[str, Fake]]:
    fake = Fake()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            q = dict(parse_qsl(url.query))
            fake.seen.append((url.path, q, self.headers.get("Authorization")))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                status, body = 401, b'{"detail":"unauthorized"}'
            else:
                status, body = fake.answers.get(q.get("mac", ""), (404, b'{"detail":"unknown"}'))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", fake
    srv.shutdown()
    srv.server_close()


KNOWN = "52:54:00:00:00:0a"


def test_http_backend_shapes(api: tuple[str, Fake], loop: LoopThread) -> None:
    url, fake = api
    fake.answers[KNOWN] = (
        200,
        json.dumps(
            {"known": True, "allow_boot": True, "static_ip": "10.0.0.9", "hostname": "n1"}
        ).encode(),
    )
    fake.answers["52:54:00:00:00:0b"] = (500, b"boom")
    fake.answers["52:54:00:00:00:0c"] = (200, b'{"known": "yes"}')
    fake.answers["52:54:00:00:00:0d"] = (200, b'{"known": true, "static_ip": "not-an-ip"}')
    fake.answers["52:54:00:00:00:0e"] = (200, b"[]")
    backend = HttpBackend(url, TOKEN)
    try:
        q = BootQuery(KNOWN, Arch.UEFI_X64, uuid="8a3b4c5d-1e2f-4a5b-8c9d-0e1f2a3b4c5d", ipxe=True)
        got = loop.run(backend.decide(q))
        assert got == BootDecision(known=True, allow_boot=True, static_ip="10.0.0.9", hostname="n1")
        path, params, auth = fake.seen[-1]
        assert path == "/api/v1/boot/decide" and auth == f"Bearer {TOKEN}"
        assert params == {
            "mac": KNOWN,
            "arch": "uefi-x64",
            "ipxe": "true",
            "uuid": "8a3b4c5d-1e2f-4a5b-8c9d-0e1f2a3b4c5d",
        }
        assert loop.run(backend.decide(BootQuery("52:54:00:00:00:01"))) == BootDecision()
        for mac in (
            "52:54:00:00:00:0b",
            "52:54:00:00:00:0c",
            "52:54:00:00:00:0d",
            "52:54:00:00:00:0e",
        ):
            with pytest.raises(BackendError):
                loop.run(backend.decide(BootQuery(mac)))
    finally:
        loop.run(backend.aclose())
    bad = HttpBackend(url, "wrong")
    try:
        with pytest.raises(BackendError, match="401"):
            loop.run(bad.decide(BootQuery(KNOWN)))
    finally:
        loop.run(bad.aclose())


def test_http_backend_unreachable(loop: LoopThread) -> None:
    backend = HttpBackend(f"http://127.0.0.1:{free_port(1)}", TOKEN, timeout=0.5)
    try:
        with pytest.raises(BackendError, match="unreachable"):
            loop.run(backend.decide(BootQuery(KNOWN)))
    finally:
        loop.run(backend.aclose())


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRONZE_PXE_MODE", "full")
    monkeypatch.setenv("BRONZE_PXE_ADDRESS", "10.1.2.3")
    monkeypatch.setenv("BRONZE_PXE_POOL_START", "10.1.2.100")
    monkeypatch.setenv("BRONZE_PXE_POOL_END", "10.1.2.200")
    monkeypatch.setenv("BRONZE_PXE_TOKEN", "s3cret")
    s = PxeSettings()
    assert s.mode is Mode.FULL and s.address == "10.1.2.3"
    assert "s3cret" not in repr(s)
    with pytest.raises(ValueError):
        PxeSettings(address="0.0.0.0")  # noqa: S104
    with pytest.raises(ValueError):
        PxeSettings(pool_start="10.0.0.1", pool_end=None)


def test_service_on_loopback(loop: LoopThread, client: Client, tmp_path: Path) -> None:
    sink = ListSink()
    (tmp_path / "undionly.kpxe").write_bytes(b"x" * 2000)
    settings = PxeSettings(
        enabled=True,
        mode=Mode.PROXY,
        address="127.0.0.1",
        dhcp_port=free_port(),
        dhcp_client_port=client.port,
        proxy_port=free_port(),
        tftp_port=free_port(),
        tftp_root=tmp_path,
    )
    backend = StaticBackend(default=BootDecision(allow_boot=True))
    service = PxeService(settings, backend, sink)
    service.dhcp.relay_port = client.port
    loop.run(service.start())
    try:
        client.send(pxe_request("52:54:00:00:00:01"), settings.dhcp_port)
        offer = client.recv()
        assert offer is not None and offer.message_type is MessageType.OFFER
        assert offer.file == b"undionly.kpxe"
        import tftpy

        out = tmp_path / "got"
        tftpy.TftpClient("127.0.0.1", settings.tftp_port).download("undionly.kpxe", str(out))
        assert out.read_bytes() == b"x" * 2000
        eventually(lambda: service.tftp is not None and service.tftp.stats.completed == 1)
    finally:
        loop.run(service.stop())


def test_service_needs_a_backend() -> None:
    with pytest.raises(ValueError):
        PxeService(PxeSettings())


def test_mac_correlator_fills_tftp_events() -> None:
    from pxe.backend import TimelineEvent, TimelineKind
    from pxe.service import MacCorrelator

    inner = ListSink()
    sink = MacCorrelator(inner)
    sink(TimelineEvent(TimelineKind.ACK, mac="52:54:00:00:00:01", detail={"yiaddr": "10.0.0.5"}))
    sink(
        TimelineEvent(
            TimelineKind.ACK,
            mac="52:54:00:00:00:02",
            detail={"yiaddr": "0.0.0.0", "to": "10.0.0.6:68"},  # noqa: S104 - a ProxyDHCP ACK
        )
    )
    sink(TimelineEvent(TimelineKind.TFTP_START, client="10.0.0.5:2000"))
    sink(TimelineEvent(TimelineKind.TFTP_START, client="10.0.0.6:2000"))
    sink(TimelineEvent(TimelineKind.TFTP_START, client="10.0.0.7:2000"))
    assert [e.mac for e in inner.events[2:]] == ["52:54:00:00:00:01", "52:54:00:00:00:02", None]


# -- CachedBackend ---------------------------------------------------------------------------------
class Slow(StaticBackend):
    """Suspends until `release` is set (like a database thread or an HTTP call); can fail once."""

    def __init__(self, fail_first: bool = False) -> None:
        super().__init__(default=BootDecision(known=True, allow_boot=True))
        self.release = asyncio.Event()
        self.fail_first = fail_first

    async def decide(self, query: BootQuery) -> BootDecision:
        self.queries.append(query)
        await self.release.wait()
        if self.fail_first and len(self.queries) == 1:
            raise BackendError("boot backend unreachable")
        return self.default


Q1 = BootQuery(mac="52:54:00:00:00:01", ipxe=True)
Q2 = BootQuery(mac="52:54:00:00:00:02", ipxe=True)


def test_cached_backend_reuses_an_answer_until_it_expires() -> None:
    now = [100.0]
    inner = StaticBackend({Q1.mac: BootDecision(known=True, allow_boot=True)})
    cached = CachedBackend(inner, 5.0, clock=lambda: now[0])

    async def main() -> list[BootDecision]:
        got = [await cached.decide(Q1), await cached.decide(Q1), await cached.decide(Q2)]
        now[0] += 4.9
        got.append(await cached.decide(Q1))
        now[0] += 0.2
        got.append(await cached.decide(Q1))
        return got

    got = asyncio.run(main())
    assert [d.known for d in got] == [True, True, False, True, True]
    assert inner.queries == [Q1, Q2, Q1]  # asked again only after 5 s


def test_cached_backend_shares_one_call_between_identical_queries() -> None:
    inner = Slow()
    cached = CachedBackend(inner, 5.0)

    async def main() -> list[BootDecision]:
        waiting = [asyncio.ensure_future(cached.decide(Q1)) for _ in range(10)]
        await asyncio.sleep(0)
        waiting[0].cancel()  # one asker giving up does not cancel the call the others wait for
        inner.release.set()
        return await asyncio.gather(*waiting[1:])

    got = asyncio.run(main())
    assert all(d.allow_boot for d in got) and len(got) == 9
    assert inner.queries == [Q1]


def test_cached_backend_does_not_keep_errors() -> None:
    inner = Slow(fail_first=True)
    inner.release.set()
    cached = CachedBackend(inner, 5.0)

    async def main() -> BootDecision:
        with pytest.raises(BackendError):
            await cached.decide(Q1)
        return await cached.decide(Q1)

    assert asyncio.run(main()).allow_boot
    assert inner.queries == [Q1, Q1]


def test_cached_backend_has_an_answer_at_hand_only_while_it_is_fresh() -> None:
    now = [100.0]
    inner = StaticBackend({Q1.mac: BootDecision(known=True, allow_boot=True)})
    cached = CachedBackend(inner, 5.0, clock=lambda: now[0])
    assert cached.decide_now(Q1) is None  # nothing asked yet: the DHCP server must await
    assert inner.queries == []
    asyncio.run(cached.decide(Q1))
    hit = cached.decide_now(Q1)
    assert hit is not None and hit.allow_boot
    assert cached.decide_now(Q2) is None
    now[0] += 5.1
    assert cached.decide_now(Q1) is None
    assert inner.queries == [Q1]  # decide_now never asks the wrapped backend
