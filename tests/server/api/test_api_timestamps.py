"""Every instant the REST API writes has one spelling: ISO 8601 in UTC ending in ``Z``, whether a
pydantic model or a hand-built view wrote it. Walks the endpoints that carry times (machines,
events, tokens, operations, profiles, assets, config patches, the netboot timeline) on a real
server with a real pyghmi BMC."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers import bmc_peers as peers
from tests.peers.apiserver import RunningServer, run_server
from tests.support.bmc import FAST_SERVER as FAST
from tests.support.bmc import add_machine, wait_op
from tests.support.boot import profile, seed
from tests.support.wait import eventually

INSTANT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


@pytest.fixture
def srv(tmp_path: Path, db_url: str) -> Iterator[RunningServer]:
    with run_server(tmp_path / "data", db_url, **FAST) as s:
        yield s


def instants(doc: Any) -> list[str]:
    if isinstance(doc, dict):
        return [s for v in doc.values() for s in instants(v)]
    if isinstance(doc, list):
        return [s for v in doc for s in instants(v)]
    return [doc] if isinstance(doc, str) and INSTANT.match(doc) else []


def test_every_timestamp_is_utc_with_z(srv: RunningServer, tmp_path: Path) -> None:
    c = srv.client()
    bmc = peers.start_pyghmi(tmp_path / "bmc")
    try:
        add_machine(c, "n1", "02:00:00:00:51:01", bmc)
        op = c.post("/api/v1/machines/n1/power", json={"action": "on"})
        assert op.status_code == 202, op.text
        assert wait_op(c, op.json())["status"] == "succeeded"
    finally:
        bmc.stop()
    assert c.post("/api/v1/tokens", json={"name": "ci", "role": "reader"}).status_code == 201
    assert c.delete("/api/v1/tokens/ci").status_code == 200
    seed(c)
    profile(c, "workers", "lab=power")
    r = c.post(
        "/api/v1/config-patches",
        json={"name": "base", "scope": "fleet", "patch": {"hostname": "x"}},
    )
    assert r.status_code == 201, r.text
    r = c.post(
        "/api/v1/boot/timeline",
        json={
            "events": [
                {"kind": "DISCOVER", "mac": "02:00:00:00:51:01", "detail": {}, "at": time.time()}
            ]
        },
    )
    assert r.status_code == 202, r.text

    docs = {
        path: c.get(path).json()
        for path in (
            "/api/v1/machines",
            "/api/v1/machines/n1",
            "/api/v1/events",
            "/api/v1/tokens",
            "/api/v1/operations",
            f"/api/v1/operations/{op.json()['id']}",
            "/api/v1/profiles",
            "/api/v1/assets",
            "/api/v1/config-patches",
        )
    }
    docs["timeline"] = eventually(  # the timeline is written in batches
        lambda: (t := c.get("/api/v1/machines/n1/timeline").json())["items"] and t, 10
    )
    seen = {path: instants(doc) for path, doc in docs.items()}
    assert all(seen.values()), {p: d for p, d in docs.items() if not seen[p]}  # each has times
    wrong = {p: [s for s in v if not s.endswith("Z")] for p, v in seen.items()}
    assert not any(wrong.values()), wrong
