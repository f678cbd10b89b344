"""Structured logs and request ids: the JSON formatter's fields (a table), and ``bronze serve``
with ``BRONZE_LOG_FORMAT=json`` end to end: every line one JSON object, a request's id echoed,
carried by the log lines of the operation it started and stored in that operation's events."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.logs import MACHINE, REQUEST_ID, JsonFormatter, sane_request_id
from tests.support.ports import free_port
from tests.support.wait import eventually

BRONZE = str(Path(sys.executable).with_name("bronze"))
ADMIN = "t" * 40


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("server.x", logging.WARNING, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


@pytest.mark.parametrize(
    ("msg", "args", "extra", "context", "want"),
    [
        ("plain", (), {}, {}, {"machine": None, "operation": None, "request_id": None}),
        (
            "operation item done op=%s machine=%s ok=%s",
            ("op-1", "node-1", True),
            {},
            {},
            {"machine": "node-1", "operation": "op-1", "request_id": None},
        ),
        (
            "x operation=op-9",
            (),
            {"machine": "m-extra"},
            {"request_id": "r-1"},
            {"machine": "m-extra", "operation": "op-9", "request_id": "r-1"},
        ),
        (
            "no keys",
            (),
            {},
            {"machine": "m-ctx", "request_id": "r-2"},
            {"machine": "m-ctx", "operation": None, "request_id": "r-2"},
        ),
        (
            "two\nlines",
            (),
            {},
            {},
            {"machine": None, "operation": None, "request_id": None, "message": "two\nlines"},
        ),
    ],
    ids=["plain", "keys-in-message", "extra-wins", "context", "newline"],
)
def test_json_formatter_fields(
    msg: str, args: tuple[Any, ...], extra: dict[str, Any], context: dict[str, str], want: dict
) -> None:
    tokens = []
    if "request_id" in context:
        tokens.append((REQUEST_ID, REQUEST_ID.set(context["request_id"])))
    if "machine" in context:
        tokens.append((MACHINE, MACHINE.set(context["machine"])))
    try:
        line = JsonFormatter().format(record(msg, *args, **extra))
    finally:
        for var, tok in reversed(tokens):
            var.reset(tok)  # type: ignore[attr-defined]
    assert "\n" not in line
    doc = json.loads(line)
    assert set(doc) >= {"time", "level", "logger", "message", "machine", "operation", "request_id"}
    assert doc["level"] == "warning" and doc["logger"] == "server.x"
    assert doc["time"].endswith("Z")
    assert doc["message"] == (msg % args if args else msg)
    for k, v in want.items():
        assert doc[k] == v, k


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("abc-123", True),
        ("0f" * 16, True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("with space", False),
        ('quo"te', False),
        ("new\nline", False),
        ("", False),
    ],
)
def test_request_ids_from_clients(given: str, kept: bool) -> None:
    assert (sane_request_id(given) == given) is kept


def test_bronze_serve_json_logs_and_request_ids(tmp_path: Path) -> None:
    port, closed = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRONZE_")}
    env |= {
        "BRONZE_DATA_DIR": str(tmp_path / "data"),
        "BRONZE_API_PORT": str(port),
        "BRONZE_ADMIN_TOKEN": ADMIN,
        "BRONZE_LOG_FORMAT": "json",
        "BRONZE_AGENT_API_ENABLED": "false",
        "BRONZE_POWER_SYNC_ENABLED": "false",
        "BRONZE_BMC_NETWORKS": "127.0.0.0/8",
        "BRONZE_BMC_PORTS": "1-65535",
        "BRONZE_BMC_SETTLE_TIMEOUT": "3",
    }
    proc = subprocess.Popen(
        [BRONZE, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        eventually(up, timeout=60, interval=0.1)
        c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
        r = c.post(
            "/api/v1/machines",
            json={
                "name": "log-1",
                "nics": [{"mac": "02:00:00:00:60:01"}],
                "bmc": {"driver": "redfish", "scheme": "http", "address": f"127.0.0.1:{closed}"},
            },
        )
        assert r.status_code == 201, r.text
        r = c.post(
            "/api/v1/machines/log-1/power",
            json={"action": "on"},
            headers={"X-Request-ID": "trace-42"},
        )
        assert r.status_code == 202 and r.headers["x-request-id"] == "trace-42"
        op_id = r.json()["id"]

        def done() -> dict[str, Any] | None:
            op = c.get(f"/api/v1/operations/{op_id}").json()
            return op if op["status"] not in ("queued", "running") else None

        assert eventually(done, timeout=60, interval=0.2)["status"] == "failed"  # closed port
        # A client's unusable id is replaced by one of ours.
        made = c.get("/healthz", headers={"X-Request-ID": "has space"}).headers["x-request-id"]
        assert made != "has space" and len(made) == 32
        # Events of the request carry its id: the request and the result of the operation.
        events = c.get("/api/v1/machines/log-1/events").json()["items"]
        by_kind = {e["kind"]: e for e in events}
        assert by_kind["power.requested"]["data"]["request_id"] == "trace-42"
        assert by_kind["power.failed"]["data"]["request_id"] == "trace-42"
        made_id = by_kind["machine.created"]["data"]["request_id"]  # no id given: ours
        assert len(made_id) == 32 and made_id != "trace-42"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "no log lines"
    bad = [line for line in lines if not line.startswith("{")]
    assert bad == [], bad
    docs = [json.loads(line) for line in lines]  # every line is one JSON object
    for d in docs:
        assert {"time", "level", "logger", "message", "machine", "operation", "request_id"} <= set(
            d
        )
    item = [d for d in docs if d["message"].startswith("operation item done")]
    assert len(item) == 1, docs
    assert item[0]["request_id"] == "trace-42"
    assert item[0]["machine"] == "log-1" and item[0]["operation"] == op_id
    assert any(d["logger"].startswith("uvicorn") for d in docs)  # uvicorn's own lines too
    assert ADMIN not in err
