"""Agent metrics with a real ``bronze-agent``: a refused enrollment (a wrong bootstrap token), then
an enrollment, a config push and its apply result; the console shows the agent and its
enrollment on the machine's time line."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.apiserver import RunningServer, run_server
from tests.support.agentlab import boot_root, spawn_agent
from tests.support.console import browser, token_of
from tests.support.metrics import get, scrape
from tests.support.wait import eventually


@pytest.fixture
def srv(tmp_path: Path, sqlite_url: str) -> Iterator[RunningServer]:
    with run_server(
        tmp_path / "data",
        sqlite_url,
        agent_api_enabled=True,
        agent_enroll_port=0,
        agent_session_port=0,
        agent_heartbeat_interval=1.0,
    ) as s:
        yield s


def test_enrollment_refusal_push_and_apply_are_counted(
    srv: RunningServer, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    c = srv.client()
    body = {"name": "node-m", "nics": [{"mac": "02:00:00:00:70:01"}]}
    assert c.post("/api/v1/machines", json=body).status_code == 201
    before, _ = scrape(srv)
    args = c.post("/api/v1/machines/node-m/enrollment-token", json={"boot_ref": "b1"}).json()[
        "kernel_args"
    ]
    forged = re.sub(r"bronze\.token=(\S+)", lambda m: "bronze.token=" + "z" * len(m[1]), args)
    assert forged != args
    bad = spawn_agent(boot_root(srv, tmp_path / "bad", forged), procs)

    refusals = {"result": "refused", "reason": "bad_token"}

    def refused() -> bool:
        now, _ = scrape(srv)
        name = "bronze_agent_enrollments_total"
        return get(now, name, **refusals) - get(before, name, **refusals) >= 1

    eventually(refused, 30)
    bad.terminate()
    bad.wait(10)

    spawn_agent(boot_root(srv, tmp_path / "good", args), procs)
    eventually(lambda: c.get("/api/v1/machines/node-m/agent").json()["connected"], 30)
    patch = {
        "name": "motd",
        "scope": "fleet",
        "patch": {"files": {"/etc/motd": {"content": "hi\n"}}},
    }
    r = c.post("/api/v1/config-patches", json=patch)
    assert r.status_code == 201 and r.json()["pushed"] == 1, r.text
    eventually(lambda: c.get("/api/v1/machines/node-m/config").json()["in_sync"], 30)
    after, _ = scrape(srv)

    def delta(name: str, **labels: str) -> float:
        return get(after, name, **labels) - get(before, name, **labels)

    assert delta("bronze_agent_enrollments_total", result="enrolled", reason="") == 1
    assert get(after, "bronze_agents_connected") == 1
    assert delta("bronze_config_pushes_total") >= 1
    assert delta("bronze_agent_command_results_total", kind="apply", result="ok") >= 1
    assert delta("bronze_agent_command_results_total", kind="apply", result="failed") == 0

    ui = browser(srv, token_of(srv, "reader"))
    page = ui.get("/ui/machines/node-m").text
    assert 'id="node-ops"' in page  # node ops are reads: a reader has them
    logs = ui.get(
        "/ui/machines/node-m/node", params={"op": "logs", "service": "chronyd", "tail": 3}
    )
    assert logs.status_code == 200
    out = re.search(r'<pre class="node" id="node-output">(.*?)</pre>', logs.text, re.S)
    assert out and out.group(1).count("\n") == 3, logs.text[-2000:]
    follow = ui.get(
        "/ui/machines/node-m/node",
        params={"op": "logs", "service": "chronyd", "tail": 3, "follow": "on", "part": "output"},
    )
    assert follow.status_code == 200 and 'id="node-output"' in follow.text
    refused = ui.get("/ui/machines/node-m/node", params={"op": "shell"})
    assert refused.status_code == 422
    assert "enrolled, hello" in page  # the agent's enrollment on the time line
    assert re.search(r"<th>connected</th><td><span class=\"ok\">yes</span>", page)
    assert "motd" in browser(srv, srv.admin_token).get("/ui/machines/node-m").text  # provenance
