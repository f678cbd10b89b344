"""A provision survives ``kill -9`` of the server mid-rack: restarted on the same ports and
database, it resumes from the rows, and no machine is powered on twice for one step or installed
twice (the BMCs' own logs and each machine's boot records say so)."""

from __future__ import annotations

import secrets
import signal
import subprocess
from pathlib import Path

from tests.peers import bmc_peers as peers
from tests.server.rollouts.test_upgrade_crash import base_env, client_for, serve, with_ports
from tests.support.fleet import make_image, start_fleet, wait_for

TERMINAL = {"succeeded", "completed_with_failures", "failed", "aborted"}


def test_kill_9_mid_provision_resumes_without_powering_twice(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    token = "brz_" + secrets.token_urlsafe(32)
    env = with_ports(base_env(tmp_path, f"sqlite:///{tmp_path / 'bronze.db'}", token))
    env.update(
        BRONZE_BMC_NETWORKS="127.0.0.0/8",
        BRONZE_BMC_PORTS="1-65535",
        BRONZE_BMC_POLL_INTERVAL="0.2",
        BRONZE_BMC_SETTLE_TIMEOUT="10",
    )
    server = serve(env, tmp_path / "serve-1.log")
    procs.append(server)
    api = client_for(env, token)
    c = api()
    image = make_image(c, "os-1", "1.0")
    assert c.post(
        "/api/v1/profiles", json={"name": "installer", "image": "os-1", "agent": True}
    ).is_success
    bmc = peers.start_pyghmi(tmp_path / "bmc", count=4, settle=0.2)
    try:
        names = ["n00", "n01", "n02", "n03"]
        ports = dict(zip(names, bmc.extra["ports"], strict=True))  # type: ignore[call-overload]
        fleet = start_fleet(
            api,
            (tmp_path / "data" / "pki" / "ca.crt").read_bytes(),
            tmp_path / "fleet",
            4,
            None,
            lambda i: {"rack": "r1"},
            procs,
            extra=["--power-events", str(bmc.extra["events"]), "--reboot-seconds", "1"],
            netboot=f"http://127.0.0.1:{env['BRONZE_API_PORT']}",
            diskless=False,
            phase="registered",
            powered_off=True,
            bmc_ports=ports,
        )
        r = c.post(
            "/api/v1/provisions",
            json={
                "selector": "rack=r1",
                "image": "os-1",
                "install": {"disk": "/dev/vda"},
                "max_parallel": 2,
                "retries": 0,
                "timeouts": {"netboot_seconds": 60},
            },
        )
        assert r.status_code == 201, r.text
        rid = r.json()["id"]

        def mid_rack() -> bool:
            ms = [m for b in c.get(f"/api/v1/provisions/{rid}").json()["batches"]
                  for m in b["machines"]]  # fmt: skip
            return any(m["state"] == "active" and m["step"] != "netbooting" for m in ms)

        wait_for(mid_rack, 120, "a machine past netbooting")
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        restarted = serve(env, tmp_path / "serve-2.log")  # same ports, data dir and database
        procs.append(restarted)
        c = api()
        done = wait_for(
            lambda: (g := c.get(f"/api/v1/provisions/{rid}").json())["status"] in TERMINAL and g,
            240,
            "the provision to end",
        )
        states = {
            m["name"]: (m["state"], m["error"]) for b in done["batches"] for m in b["machines"]
        }
        assert done["status"] == "succeeded", states
        log = (bmc.extra["events"]).read_text().splitlines()  # type: ignore[attr-defined]
        for name in names:
            mine = [e.split(" ", 1)[1] for e in log if e.startswith(f"{ports[name]} ")]
            assert [e for e in mine if e in ("on", "cycle", "reset")] == ["on"], (name, mine)
            # one netboot, then one boot from the installed disk (slot A with the image)
            boots = fleet.boots(name)
            assert [(b["slot"], b["image"]) for b in boots][-1] == ("A", image["digest"]), boots
            assert [b["slot"] for b in boots].count("A") == 1, boots
            m = c.get(f"/api/v1/machines/{name}").json()
            assert (m["phase"], m["image"]) == ("ready", "os-1"), m
    finally:
        bmc.stop()
