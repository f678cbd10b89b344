"""Rolling-upgrade benchmark: N simulated installed machines, one ``bronze serve``, batches of 10%.

    .venv/bin/python -m bench.upgrade --machines 1000 --reboot-seconds 1

Each simulated machine writes its inactive slot for real (sandbox A/B disk, small image files);
the write and the reboot take ``--reboot-seconds`` together, counted from the Upgrade command's
arrival (the issue's "each node's write + reboot taking a simulated 1 s"; a write that takes
longer delays the reboot). The ideal is ``batches x (reboot + health
confirmation)``, where one health confirmation is a runner pass plus the agent's reconnect (we
count ``2 x rollout_interval`` per batch as the unavoidable part). Measures: wall time against
that ideal, the server's CPU time per machine, its RSS growth during the rollout, and the p50/p99
of ``GET /api/v1/machines?limit=100`` probed 10 times a second while the rollout runs.

Prints a table; also writes JSON to bench/results/upgrade-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.agents import cpu_seconds, rss_mib
from bench.profile import Sampler
from tests.support.fleet import image_dir, make_image
from tests.support.paths import FIXTURES
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
BRONZE = Path(sys.executable).with_name("bronze")
AGENT = Path(sys.executable).with_name("bronze-agent")
TERMINAL = {"succeeded", "completed_with_failures", "failed", "aborted"}


def wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise SystemExit(f"timed out: {what}")


def serve(
    work: Path, token: str, interval: float, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRONZE_")}
    env.update(
        BRONZE_DATA_DIR=str(work / "data"),
        BRONZE_ADMIN_TOKEN=token,
        BRONZE_API_PORT=str(port),
        BRONZE_AGENT_ENROLL_PORT=str(free_port()),
        BRONZE_AGENT_SESSION_PORT=str(free_port()),
        BRONZE_POWER_SYNC_ENABLED="false",
        BRONZE_AGENT_HEARTBEAT_INTERVAL="30",
        BRONZE_ROLLOUT_INTERVAL=str(interval),
        BRONZE_LOG_LEVEL="warning",
    )
    env.update(extra_env or {})
    log = open(work / "serve.log", "ab")  # noqa: SIM115 - closed right after the fork
    proc = subprocess.Popen(
        ["taskset", "-c", "0", str(BRONZE), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    wait(lambda: _up(url), 120, "bronze serve")
    return proc, url


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def setup(c: httpx.Client, n: int, work: Path) -> tuple[dict[str, str], str, dict[str, Any]]:
    v1, v2 = make_image(c, "os-1", "1.0"), make_image(c, "os-2", "2.0")
    tokens: dict[str, str] = {}
    kernel_args = ""
    for i in range(n):
        name = f"m{i:05}"
        r = c.post(
            "/api/v1/machines",
            json={
                "name": name,
                "labels": {"role": "worker"},
                "nics": [{"mac": f"02:10:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}:01"}],
            },
        )
        r.raise_for_status()
        mid = r.json()["id"]
        for phase in ("provisioning", "ready"):
            c.patch(f"/api/v1/machines/{name}", json={"phase": phase}).raise_for_status()
        tok = c.post(f"/api/v1/machines/{name}/enrollment-token", json={"boot_ref": "bench"}).json()
        tokens[mid] = tok["token"]
        kernel_args = tok["kernel_args"]
    image_dir(c, v1, work / "v1")
    return tokens, kernel_args, v2


def probe(url: str, token: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            c.get("/api/v1/machines", params={"limit": 100, "selector": "role=worker"})
            out.append((time.perf_counter() - t0) * 1000)
            stop.wait(0.1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--machines", type=int, default=1000)
    ap.add_argument("--reboot-seconds", type=float, default=1.0)
    ap.add_argument("--interval", type=float, default=0.2, help="BRONZE_ROLLOUT_INTERVAL")
    ap.add_argument("--profile", type=Path, help="py-spy collapsed stacks of the server here")
    ap.add_argument("--profile-simulator", type=Path, help="the same for the simulator")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-upgrade-"))
    token = "brz_" + secrets.token_urlsafe(32)
    server, url = serve(work, token, args.interval)
    agents = None
    try:
        c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        t0 = time.monotonic()
        tokens, kernel_args, v2 = setup(c, args.machines, work)
        print(f"setup: {args.machines} machines in {time.monotonic() - t0:.1f} s", flush=True)
        params = dict(w.split("=", 1) for w in kernel_args.split() if "=" in w)
        (work / "tokens.json").write_text(json.dumps(tokens))
        (work / "ca.pem").write_bytes((work / "data/pki/ca.crt").read_bytes())
        log = open(work / "agents.log", "ab")  # noqa: SIM115
        agents = subprocess.Popen(
            [
                "taskset",
                "-c",
                "1",
                str(AGENT),
                "simulate",
                "--count",
                str(args.machines),
                "--root-template",
                str(FIXTURES / "qemu-vm"),
                "--work",
                str(work / "machines"),
                "--server",
                params["bronze.server"],
                "--enroll",
                params["bronze.enroll"],
                "--ca",
                str(work / "ca.pem"),
                "--tokens",
                str(work / "tokens.json"),
                "--heartbeat",
                "30",
                "--ramp",
                "20",
                "--backoff-max",
                "1",
                "--reboot-seconds",
                str(args.reboot_seconds),
                "--installed",
                str(work / "v1"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def connected() -> bool:
            return connected_count(work / "data" / "bronze.db") >= args.machines

        t0 = time.monotonic()
        wait(connected, 600, "every agent connected")
        print(f"agents connected in {time.monotonic() - t0:.1f} s", flush=True)
        cpu0, (rss0, _) = cpu_seconds(server.pid), rss_mib(server.pid)
        sim0, load0 = cpu_seconds(agents.pid), os.getloadavg()[0]
        lat: list[float] = []
        stop = threading.Event()
        th = threading.Thread(target=probe, args=(url, token, stop, lat), daemon=True)
        th.start()
        sampler = Sampler(server.pid, args.profile).__enter__()
        sim_sampler = Sampler(agents.pid, args.profile_simulator).__enter__()
        t0 = time.monotonic()
        r = c.post(
            "/api/v1/upgrades",
            json={
                "image": "os-2",
                "selector": "role=worker",
                "preserve": True,
                "batch_size": "10%",
                "health_timeout_seconds": 300,
            },
        )
        r.raise_for_status()
        rid = r.json()["id"]
        batches = len(r.json()["batches"])
        peak = rss0
        while True:
            got = c.get(f"/api/v1/upgrades/{rid}").json()
            peak = max(peak, rss_mib(server.pid)[0])
            if got["status"] in TERMINAL:
                break
            time.sleep(0.5)
        polled = time.monotonic() - t0
        wall = rollout_seconds(got)
        sampler.__exit__(None, None, None)
        sim_sampler.__exit__(None, None, None)
        stop.set()
        th.join()
        cpu = cpu_seconds(server.pid) - cpu0
        sim = cpu_seconds(agents.pid) - sim0
        ideal = batches * (args.reboot_seconds + 2 * args.interval)
        lat.sort()
        res = {
            "machines": args.machines,
            "batches": batches,
            "status": got["status"],
            "succeeded": got["counts"]["succeeded"],
            "wall_s": round(wall, 2),
            "ideal_s": round(ideal, 2),
            "ratio": round(wall / ideal, 2),
            "server_cpu_ms_per_machine": round(cpu * 1000 / args.machines, 2),
            "server_cpu_share": round(cpu / polled, 2),
            "simulator_cpu_share": round(sim / polled, 2),
            "load_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "rss_growth_mib": round(peak - rss0, 1),
            "get_machines_p50_ms": round(statistics.median(lat), 1) if lat else None,
            "get_machines_p99_ms": round(lat[int(len(lat) * 0.99) - 1], 1) if lat else None,
        }
        print("\n| figure | bronze | target |\n|---|---|---|")
        wall_cell = f"{res['wall_s']} s ({res['ratio']}x ideal {res['ideal_s']} s)"
        print(f"| wall time, {batches} batches | {wall_cell} | <= 1.15x |")
        print(f"| machines succeeded | {res['succeeded']} / {args.machines} | all |")
        print(f"| server CPU per machine | {res['server_cpu_ms_per_machine']} ms | - |")
        print(
            f"| server / simulator CPU (cores) | {res['server_cpu_share']} / "
            f"{res['simulator_cpu_share']} | - |"
        )
        print(f"| load average before / after | {res['load_before_after']} | - |")
        print(f"| server RSS growth | {res['rss_growth_mib']} MiB | < 100 MiB |")
        lat_cell = f"{res['get_machines_p50_ms']} / {res['get_machines_p99_ms']} ms"
        print(f"| GET /machines p50 / p99 | {lat_cell} | p99 < 100 ms |")
        print("\n| step (per machine) | min | median | max |\n|---|---|---|---|")
        for name, values in step_times(work / "data" / "bronze.db").items():
            cells = " | ".join(f"{v:.3f} s" for v in values)
            print(f"| {name} | {cells} |")
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / f"upgrade-{int(time.time())}.json").write_text(json.dumps(res, indent=2))
    finally:
        for p in (agents, server):
            if p is not None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()


def rollout_seconds(view: dict[str, Any]) -> float:
    """From the rollout's creation to its last status change, by the server's clock: the
    status poll (every 0.5 s) would add up to half a second."""
    created = datetime.fromisoformat(view["created_at"])
    return (datetime.fromisoformat(view["updated_at"]) - created).total_seconds()


STEPS = ("started", "booting", "verifying", "confirming", "succeeded")


def step_times(db: Path) -> dict[str, tuple[float, float, float]]:
    """Each machine's time from one step to the next, read from the rollout's events."""
    at: dict[str, dict[str, float]] = {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        for name, kind, step, created in conn.execute(
            "SELECT machine_name, kind, json_extract(data, '$.step'), created_at FROM events"
            " WHERE kind LIKE 'rollout.machine.%'"
        ):
            what = step if kind == "rollout.machine.step" else kind.rsplit(".", 1)[1]
            at.setdefault(name, {})[what] = datetime.fromisoformat(created).timestamp()
    out: dict[str, tuple[float, float, float]] = {}
    for a, b in zip(STEPS, STEPS[1:], strict=False):
        gaps = sorted(t[b] - t[a] for t in at.values() if a in t and b in t)
        if gaps:
            out[f"{a} -> {b}"] = (gaps[0], statistics.median(gaps), gaps[-1])
    return out


def connected_count(db: Path) -> int:
    """Agents the server records as connected (read from its SQLite file, not over 1,000 GETs)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        return int(conn.execute("SELECT count(*) FROM agent_states WHERE connected").fetchone()[0])


if __name__ == "__main__":
    main()
