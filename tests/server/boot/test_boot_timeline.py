"""The timeline's producers never wait: bounded queues drop and count instead of blocking, and
nothing is lost while the database or the central server answers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pxe import TimelineEvent, TimelineKind
from server.boot.remote import HttpTimelineSink
from server.boot.timeline import Retention, Row, TimelineWriter, read
from server.inventory import migrate
from server.inventory.db import Database
from tests.peers.apiserver import RunningServer
from tests.support.ports import free_udp_port as free_port
from tests.support.wait import eventually


def test_writer_queue_is_bounded_and_never_blocks(db: Database) -> None:
    writer = TimelineWriter(db, Retention(), maxsize=3)
    t0 = time.monotonic()
    accepted = [
        writer.submit(Row("02:00:00:00:07:01", "DISCOVER", time.time(), "t")) for _ in range(50)
    ]
    writer.sink(TimelineEvent(TimelineKind.TFTP_START, mac=None, client="10.0.0.1:1"))  # no MAC
    assert time.monotonic() - t0 < 5  # generous: the point is that nothing waited for a consumer
    assert accepted.count(True) == 3 and writer.dropped == 47
    writer.start()
    try:
        for i in range(20):
            writer.sink(
                TimelineEvent(
                    TimelineKind.OFFER, mac="02:00:00:00:07:02", detail={"i": i, "o": object()}
                )
            )
            eventually(lambda: writer._q.qsize() < 3, timeout=10)
    finally:
        writer.stop()
    with db.read() as s:
        assert len(read(s, ["02:00:00:00:07:01"], 100)) == 3
        rows = read(s, ["02:00:00:00:07:02"], 100)
    assert [r["detail"]["i"] for r in rows] == list(range(20))
    assert all(isinstance(r["detail"]["o"], str) for r in rows)  # made JSON-safe


def test_http_sink_keeps_events_while_the_server_is_away(api: RunningServer) -> None:
    c = api.client()
    token = c.post("/api/v1/tokens", json={"name": "rack9", "role": "boot"}).json()["token"]

    async def scenario() -> tuple[int, int]:
        away = HttpTimelineSink(f"http://127.0.0.1:{free_port(1)}", token, limit=5)
        for i in range(8):
            away(TimelineEvent(TimelineKind.DISCOVER, mac="02:00:00:00:08:01", detail={"i": i}))
        away(TimelineEvent(TimelineKind.TFTP_START, mac=None, client="10.0.0.1:1"))
        await away.flush()  # unreachable: kept, not lost
        kept, dropped = len(away._buf), away.dropped
        await away.stop()
        sink = HttpTimelineSink(api.url, token, interval=0.05)
        await sink.start()
        for i in range(3):
            sink(TimelineEvent(TimelineKind.OFFER, mac="02:00:00:00:08:02", detail={"i": i}))
        while sink.posted < 3:
            await asyncio.sleep(0.05)
        await sink.stop()
        return kept, dropped

    kept, dropped = asyncio.run(scenario())
    assert (kept, dropped) == (5, 3)
    items = eventually(
        lambda: c.get("/api/v1/boot/timeline", params={"mac": "02:00:00:00:08:02"}).json()["items"]
    )
    assert [e["detail"]["i"] for e in items] == [0, 1, 2] and items[0]["source"] == "pxe:rack9"


def test_writer_survives_a_failing_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"  # never migrated: every insert fails
    database = Database.connect(url)
    writer = TimelineWriter(database, Retention(), prune_every=0.1)
    writer.start()
    try:
        writer.submit(Row("02:00:00:00:09:01", "DISCOVER", time.time(), "t"))
        eventually(lambda: writer._q.qsize() == 0, timeout=10)
        assert writer._thread is not None and writer._thread.is_alive()
        migrate.upgrade(url)
        writer.submit(Row("02:00:00:00:09:01", "OFFER", time.time(), "t"))
        eventually(lambda: writer.written == 1, timeout=10)
    finally:
        writer.stop()
        database.dispose()
