"""Provisioning benchmark: N simulated machines behind simulated IPMI BMCs, one ``bronze serve``.

    .venv/bin/python -m bench.provision --machines 200 --max-parallel 50 --boot-seconds 2

Each machine starts powered off; its BMC (pyghmi, ``bench.bmc_sim``, with a settle time) powers
it on when bronze asks, it netboots through ``/boot.ipxe``, enrolls, gets its config, installs
the image to its sandbox disk and boots it (each boot takes ``--boot-seconds``). The ideal is
``waves x (BMC settle + 2 boots)`` with ``waves = ceil(N / max_parallel)``: what the requested
parallelism and the simulated delays allow with an infinitely fast server. Measures the wall
time against it and the server's CPU time per machine.

Prints a table; also writes JSON to bench/results/provision-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import sqlite3
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from bench.agents import cpu_seconds
from bench.bmc_sim import sim_fleet
from bench.profile import Sampler
from bench.upgrade import AGENT, ROOT, TERMINAL, rollout_seconds, serve
from tests.support.fleet import make_image
from tests.support.paths import FIXTURES


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--machines", type=int, default=200)
    ap.add_argument("--max-parallel", type=int, default=50)
    ap.add_argument("--boot-seconds", type=float, default=2.0)
    ap.add_argument("--settle", type=float, default=0.5, help="BMC power settle time")
    ap.add_argument("--interval", type=float, default=0.2, help="BRONZE_ROLLOUT_INTERVAL")
    ap.add_argument("--profile", type=Path, help="py-spy collapsed stacks of the server here")
    args = ap.parse_args()
    n = args.machines
    work = Path(tempfile.mkdtemp(prefix="bench-provision-"))
    token = "brz_" + secrets.token_urlsafe(32)
    events = work / "bmc-events"
    events.touch()
    procs = max(1, math.ceil(n / 100))
    # pyghmi, as for the figures in docs/provisioning.md (bench/power.py uses the lean one)
    with sim_fleet(processes=procs, per_process=math.ceil(n / procs), settle=args.settle,
                   events=events, kind="pyghmi") as bmcs:  # fmt: skip
        server, url = serve(
            work,
            token,
            args.interval,
            {
                "BRONZE_BMC_NETWORKS": "127.0.0.0/8",
                "BRONZE_BMC_PORTS": "1-65535",
                "BRONZE_BMC_POLL_INTERVAL": "0.2",
                "BRONZE_BMC_MAX_CONCURRENCY": "256",
            },
        )
        agents = None
        try:
            c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
            make_image(c, "os-1", "1.0")
            c.post(
                "/api/v1/profiles", json={"name": "installer", "image": "os-1", "agent": True}
            ).raise_for_status()
            tokens: dict[str, str] = {}
            macs: dict[str, str] = {}
            ports: dict[str, int] = {}
            kernel_args = ""
            t0 = time.monotonic()
            for i, ep in zip(range(n), bmcs.endpoints, strict=False):
                mac = f"02:20:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}:01"
                r = c.post(
                    "/api/v1/machines",
                    json={
                        "name": f"p{i:05}",
                        "labels": {"rack": "bench"},
                        "nics": [{"mac": mac}],
                        "bmc": {
                            "driver": "ipmi",
                            "address": f"{ep.address}:{ep.port}",
                            "username": ep.username,
                            "password": ep.password,
                        },
                    },
                )
                r.raise_for_status()
                mid = r.json()["id"]
                tok = c.post(
                    f"/api/v1/machines/{mid}/enrollment-token", json={"boot_ref": "bench"}
                ).json()
                tokens[mid], macs[mid], ports[mid] = tok["token"], mac, ep.port
                kernel_args = tok["kernel_args"]
            print(f"setup: {n} machines in {time.monotonic() - t0:.1f} s", flush=True)
            params = dict(w.split("=", 1) for w in kernel_args.split() if "=" in w)
            for name, doc in (("tokens", tokens), ("macs", macs), ("ports", ports)):
                (work / f"{name}.json").write_text(json.dumps(doc))
            (work / "ca.pem").write_bytes((work / "data/pki/ca.crt").read_bytes())
            log = open(work / "agents.log", "ab")  # noqa: SIM115
            agents = subprocess.Popen(
                ["taskset", "-c", "1", str(AGENT), "simulate", "--count", str(n),
                 "--root-template", str(FIXTURES / "qemu-vm"), "--work", str(work / "machines"),
                 "--server", params["bronze.server"], "--enroll", params["bronze.enroll"],
                 "--ca", str(work / "ca.pem"), "--tokens", str(work / "tokens.json"),
                 "--heartbeat", "30", "--ramp", "0", "--backoff-max", "1",
                 "--reboot-seconds", str(args.boot_seconds), "--powered-off",
                 "--power-events", str(events), "--bmc-ports", str(work / "ports.json"),
                 "--netboot", url, "--netboot-macs", str(work / "macs.json")],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            log.close()
            while "simulating" not in (work / "agents.log").read_text(errors="replace"):
                time.sleep(0.2)
            cpu0, load0 = cpu_seconds(server.pid), os.getloadavg()[0]
            sims = [agents.pid, *bmcs.pids]
            sim0 = sum(cpu_seconds(p) for p in sims)
            sampler = Sampler(server.pid, args.profile).__enter__()
            t0 = time.monotonic()
            r = c.post(
                "/api/v1/provisions",
                json={
                    "selector": "rack=bench",
                    "image": "os-1",
                    "install": {"disk": "/dev/vda"},
                    "expect": ["nics >= 1"],
                    "max_parallel": args.max_parallel,
                    "timeouts": {"netboot_seconds": 600},
                },
            )
            r.raise_for_status()
            rid = r.json()["id"]
            while (got := c.get(f"/api/v1/provisions/{rid}").json())["status"] not in TERMINAL:
                time.sleep(0.5)
            polled = time.monotonic() - t0
            wall = rollout_seconds(got)
            sampler.__exit__(None, None, None)
            cpu = cpu_seconds(server.pid) - cpu0
            sim = sum(cpu_seconds(p) for p in sims) - sim0
            load1 = os.getloadavg()[0]
        finally:
            for p in (agents, server):
                if p is not None:
                    p.terminate()
                    try:
                        p.wait(20)
                    except subprocess.TimeoutExpired:
                        p.kill()
    waves = math.ceil(n / args.max_parallel)
    ideal = waves * (args.settle + 2 * args.boot_seconds)
    res = {
        "machines": n,
        "max_parallel": args.max_parallel,
        "status": got["status"],
        "ready": got["counts"]["succeeded"],
        "wall_s": round(wall, 2),
        "ideal_s": round(ideal, 2),
        "ratio": round(wall / ideal, 2),
        "server_cpu_ms_per_machine": round(cpu * 1000 / n, 1),
        "server_cpu_share": round(cpu / polled, 2),
        "simulators_cpu_share": round(sim / polled, 2),
        "load_before_after": [round(load0, 2), round(load1, 2)],
    }
    print("\n| figure | bronze | target |\n|---|---|---|")
    print(f"| machines ready | {res['ready']} / {n} ({res['status']}) | all |")
    print(
        f"| wall time, {waves} waves of {args.max_parallel} | {res['wall_s']} s "
        f"({res['ratio']}x ideal {res['ideal_s']} s) | <= 1.2x |"
    )
    print(f"| server CPU per machine | {res['server_cpu_ms_per_machine']} ms | - |")
    print(
        f"| server / simulators CPU (cores) | {res['server_cpu_share']} / "
        f"{res['simulators_cpu_share']} | - |"
    )
    print(f"| load average before / after | {res['load_before_after']} | - |")
    print("\n| interval (per machine) | median | max |\n|---|---|---|")
    for what, (median, worst) in step_times(work / "data" / "bronze.db").items():
        print(f"| {what} | {median:.2f} s | {worst:.2f} s |")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"provision-{int(time.time())}.json").write_text(json.dumps(res, indent=2))


MILESTONES = """
SELECT e.machine_id, e.kind, json_extract(e.data, '$.step'), e.created_at FROM events e
WHERE e.kind IN ('boot-device.requested', 'boot-device.succeeded', 'power.requested',
                 'power.succeeded', 'rollout.machine.step', 'rollout.machine.succeeded')
UNION ALL
SELECT n.machine_id, 'script', NULL, b.at FROM boot_timeline b JOIN nics n ON n.mac = b.mac
WHERE b.kind = 'SCRIPT'
ORDER BY 4
"""


def step_times(db: Path) -> dict[str, tuple[float, float]]:
    """Median and worst time per machine between its milestones (BMC calls, boot script
    served, provisioning steps), read from the server's SQLite file: where the time goes."""
    seen: dict[str, list[tuple[str, float]]] = {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        for mid, kind, step, at in conn.execute(MILESTONES):
            label = f"step {step}" if kind == "rollout.machine.step" else kind
            t = datetime.fromisoformat(at).timestamp()
            mine = seen.setdefault(mid, [])
            if not mine or mine[-1][0] != label:
                mine.append((label, t))
    gaps: dict[str, list[float]] = {}
    for marks in seen.values():
        for (a, t0), (b, t1) in zip(marks, marks[1:], strict=False):
            gaps.setdefault(f"{a} -> {b}", []).append(t1 - t0)
    return {k: (statistics.median(v), max(v)) for k, v in gaps.items() if len(v) > 1}


if __name__ == "__main__":
    main()
