"""``/metrics`` against what really happened: a power operation on a Redfish BMC
(sushy-emulator) and a network boot from crafted traffic (DHCP, TFTP, script, kernel, initrd) on
loopback; the exposition is parsed with prometheus-client's own parser. Counters of events are
per process (tests share one), so they are compared before and after; the boot plane's and the
fleet's are per app, so they are exact."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.peers.apiserver import RunningServer, run_server
from tests.support.bmc import FAST_SERVER, add_machine, start_peer, wait_op
from tests.support.boot import machine, profile, seed
from tests.support.console import boot_traffic, pxe_settings, token_of
from tests.support.metrics import Samples, get, parse, scrape
from tests.support.ports import free_port
from tests.support.wait import eventually


@pytest.fixture
def lab(tmp_path: Path, sqlite_url: str) -> Iterator[RunningServer]:
    with run_server(
        tmp_path / "data", sqlite_url, pxe_settings=pxe_settings(tmp_path), **FAST_SERVER
    ) as srv:
        yield srv


def test_scrape_after_a_power_operation_and_a_boot(lab: RunningServer, tmp_path: Path) -> None:
    c = lab.client()
    before, _ = scrape(lab)
    peer = start_peer("sushy", tmp_path / "sushy")
    try:
        add_machine(c, "pw-1", "02:00:00:00:50:01", peer)
        op = wait_op(c, c.post("/api/v1/machines/pw-1/power", json={"action": "on"}).json())
        assert op["status"] == "succeeded", op
    finally:
        peer.stop()
    seed(c)
    profile(c, "generic")
    machine(c, "boot-1", "52:54:00:50:00:02", phase="provisioning")
    boot_traffic(lab, "52:54:00:50:00:02", tmp_path)
    after, text = scrape(lab)

    def delta(name: str, **labels: str) -> float:
        return get(after, name, **labels) - get(before, name, **labels)

    # Fleet state (read from the database at scrape time).
    assert get(after, "bronze_machines", phase="registered") == 1
    assert get(after, "bronze_machines", phase="provisioning") == 1
    assert get(after, "bronze_machines", phase="ready") == 0
    assert get(after, "bronze_machines_power", state="on") == 1
    assert get(after, "bronze_machines_power", state="unknown") == 1
    assert get(after, "bronze_agents_connected") == 0
    assert get(after, "bronze_metrics_database_up") == 1
    # The BMC operation: one verified power-on, its latency observed once.
    assert delta("bronze_bmc_operations_total", driver="redfish", action="power-on", result="ok")
    assert (
        delta("bronze_bmc_operations_total", driver="redfish", action="power-on", result="ok") == 1
    )
    assert delta("bronze_bmc_operation_seconds_count", driver="redfish", action="power-on") == 1
    elapsed = delta("bronze_bmc_operation_seconds_sum", driver="redfish", action="power-on")
    assert 0 < elapsed < 60
    # The boot: one DISCOVER answered, one TFTP transfer of the 2,000-byte boot file.
    # The OFFER goes to the relay address (giaddr 127.0.0.1) at the server's own port: it comes
    # back and is dropped as "not a request", the one drop of this boot.
    assert get(after, "bronze_dhcp_received_total") == 2
    assert get(after, "bronze_dhcp_answered_total") == 1
    assert get(after, "bronze_dhcp_packets_total", type="DISCOVER") == 1
    drops = {
        dict(labels)["reason"]: v
        for (n, labels), v in after.items()
        if n == "bronze_dhcp_dropped_total"
    }
    assert drops == {"not_request": 1}
    assert get(after, "bronze_tftp_transfers_total", result="started") == 1
    assert get(after, "bronze_tftp_transfers_total", result="completed") == 1
    assert get(after, "bronze_tftp_transfers_total", result="aborted") == 0
    assert get(after, "bronze_tftp_sent_bytes_total") == 2000
    assert delta("bronze_boot_decisions_total", stage="dhcp", action="boot") == 1
    assert delta("bronze_boot_decisions_total", stage="script", action="profile") == 1
    # REST latency under route templates, never raw paths (one series per route, not per machine).
    route = "/api/v1/machines/{key}/power"
    assert delta("bronze_http_request_seconds_count", method="POST", route=route, status="202") == 1
    assert "pw-1" not in text and "boot-1" not in text
    assert delta("bronze_db_transaction_seconds_count", kind="write") > 0
    assert delta("bronze_db_transaction_seconds_count", kind="read") > 0


def test_metrics_need_a_token_or_the_separate_listener(tmp_path: Path, sqlite_url: str) -> None:
    with run_server(tmp_path / "a", sqlite_url) as srv:
        assert httpx.get(f"{srv.url}/metrics").status_code == 401
        assert srv.client("brz_" + "x" * 43).get("/metrics").status_code == 401
        scrape(srv, token_of(srv, "reader"))  # default: any reader token
    metrics_token = "m" * 40
    port = free_port()
    with run_server(
        tmp_path / "b",
        sqlite_url,
        metrics_token=metrics_token,
        metrics_port=port,
        admin_token="a" * 40,  # the database already has its admin token from the first server
    ) as srv:
        assert srv.client().get("/metrics").status_code == 401  # the admin's API token: no
        samples, _ = scrape(srv, metrics_token)
        assert get(samples, "bronze_machines", phase="registered") == 0
        # The separate listener: no token, only /metrics-shaped answers.
        r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert r.status_code == 200
        assert ("bronze_machines", frozenset({("phase", "ready")})) in parse(r.text)
    with pytest.raises(httpx.ConnectError):  # stopped with the server
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_the_exposition_parses_in_a_fresh_interpreter(lab: RunningServer) -> None:
    """The whole exposition (help texts, label escaping) parses with the reference parser in a
    process that never imported bronze."""
    _, text = scrape(lab)
    code = (
        "import sys; from prometheus_client.parser import text_string_to_metric_families as p;"
        "fams = list(p(sys.stdin.read())); print(len(fams))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], input=text, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) >= 15


def test_power_sync_failures_are_counted(tmp_path: Path, sqlite_url: str) -> None:
    closed = free_port()  # a BMC address where nothing listens
    with run_server(
        tmp_path / "data",
        sqlite_url,
        power_sync_enabled=True,
        power_sync_interval=0.5,
        power_sync_failures=100,  # stays out of maintenance: keeps being polled
        **FAST_SERVER,
    ) as srv:
        before, _ = scrape(srv)
        body = {
            "name": "sync-1",
            "nics": [{"mac": "02:00:00:00:51:01"}],
            "bmc": {"driver": "redfish", "scheme": "http", "address": f"127.0.0.1:{closed}"},
        }
        assert srv.client().post("/api/v1/machines", json=body).status_code == 201

        def failed_twice() -> bool:
            now, _ = scrape(srv)
            name = "bronze_power_sync_failures_total"
            return get(now, name) - get(before, name) >= 2

        eventually(failed_twice, timeout=60, interval=0.5)
        after, _ = scrape(srv)
        assert get(after, "bronze_machines_power", state="unknown") == 1

        def failed_reads(samples: Samples) -> dict[str, float]:
            out: dict[str, float] = {}
            for (name, labels), v in samples.items():
                lab = dict(labels)
                if name == "bronze_bmc_operations_total" and lab["action"] == "get-power-state":
                    out[lab["result"]] = v
            return out

        new = {k: v - failed_reads(before).get(k, 0) for k, v in failed_reads(after).items()}
        assert new.get("ok", 0) == 0 and sum(new.values()) >= 2, new  # e.g. BmcConnectionError


def test_docs_and_dashboard_name_only_exported_metrics(lab: RunningServer) -> None:
    """docs/metrics.md's table and the Grafana dashboard name real metric families (and the
    table lists every family the server exports)."""
    import json
    import re

    from prometheus_client.parser import text_string_to_metric_families

    from tests.support.paths import ROOT

    _, text = scrape(lab)
    families = {f.name for f in text_string_to_metric_families(text)}
    families = {n for n in families if n.startswith("bronze_")}

    def family(name: str) -> str:
        return re.sub(r"_(total|bucket|count|sum)$", "", name)

    doc = (ROOT / "docs" / "metrics.md").read_text()
    documented = {family(n) for n in re.findall(r"^\| `(bronze_\w+)`", doc, re.M)}
    documented |= {family(n) for n in re.findall(r", `(bronze_\w+)`", doc)}
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {family(n) for e in exprs for n in re.findall(r"bronze_\w+", e)}
    assert used - families == set(), "dashboard names unknown metrics"
    assert documented - families == set(), "docs name unknown metrics"
    assert families - documented == set(), "metrics missing from docs/metrics.md"
    assert len(dashboard["panels"]) >= 10
