"""Power benchmark (issue: power plane). Not a test: prints a table.

1,000 machines behind simulated IPMI BMCs (10 processes x 100 pyghmi BMCs on 127.0.0.1, see
bench/bmc_sim.py) are power-cycled with verification through the bulk API of a real
`bronze serve`. Reported beside:
  - the ideal: the slowest single verified cycle (measured alone, through the API) x ceil(N / C),
    C = max_parallel = BRONZE_BMC_MAX_CONCURRENCY;
  - a sequential `ipmitool -I lanplus -C 3 chassis power cycle` loop over 50 BMCs, scaled to N.
While the bulk operation runs, a probe thread times GET /api/v1/machines/{name} (p99).
Targets: <= 1.25x ideal, >= 20x faster than the ipmitool loop, API p99 < 100 ms.

    .venv/bin/python bench/power.py [--processes 10 --per-process 100 --concurrency 64]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bmc_sim import ipmitool_cycle_loop, sim_fleet  # noqa: E402

from tests.peers.apiserver import free_port  # noqa: E402


def wait_op(c: httpx.Client, op: dict, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while op["status"] in ("queued", "running"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"operation {op['id']} did not finish")
        time.sleep(0.2)
        op = c.get(f"/api/v1/operations/{op['id']}").json()
    return op


def span(op: dict) -> float:
    return (datetime.fromisoformat(op["finished_at"]) - datetime.fromisoformat(op["created_at"])).total_seconds()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=10)
    ap.add_argument("--per-process", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--settle", type=float, default=0.2, help="simulated BMC power settle delay (s)")
    ap.add_argument("--ipmitool-count", type=int, default=50)
    args = ap.parse_args()
    n = args.processes * args.per_process
    password = "bench-pw-3e9a"  # noqa: S105 - simulated BMCs only
    with tempfile.TemporaryDirectory() as tmp, sim_fleet(args.processes, args.per_process, args.settle,
                                                          password=password) as fleet:
        port = free_port()
        token = "brz_" + os.urandom(24).hex()
        env = {**os.environ, "BRONZE_DATA_DIR": tmp, "BRONZE_API_PORT": str(port), "BRONZE_ADMIN_TOKEN": token,
               "BRONZE_BMC_NETWORKS": "127.0.0.0/8", "BRONZE_POWER_SYNC_ENABLED": "false",
               "BRONZE_BMC_MAX_CONCURRENCY": str(args.concurrency), "BRONZE_BMC_MIN_INTERVAL": "0",
               "BRONZE_BMC_POLL_INTERVAL": "0.1", "BRONZE_BMC_SETTLE_TIMEOUT": "30",
               "BRONZE_LOG_LEVEL": "warning"}
        server = subprocess.Popen([str(Path(sys.executable).with_name("bronze")), "serve"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            c = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60)
            deadline = time.monotonic() + 60
            while True:
                try:
                    c.get("/healthz")
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            t0 = time.monotonic()
            for i, ep in enumerate(fleet.endpoints):
                r = c.post("/api/v1/machines", json={
                    "name": f"m{i:04d}", "nics": [{"mac": f"02:10:00:00:{i >> 8:02x}:{i & 255:02x}"}],
                    "labels": {"bench": "power"},
                    "bmc": {"driver": "ipmi", "address": f"{ep.address}:{ep.port}", "username": ep.username,
                            "password": ep.password}})
                r.raise_for_status()
            print(f"registered {n} machines in {time.monotonic() - t0:.1f}s", file=sys.stderr)

            singles = []
            for i in range(10):
                op = wait_op(c, c.post(f"/api/v1/machines/m{i * (n // 10):04d}/power", json={"action": "cycle"}).json())
                assert op["status"] == "succeeded", op
                singles.append(span(op))
            slowest = max(singles)
            ideal = slowest * math.ceil(n / args.concurrency)

            latencies: list[float] = []
            stop = threading.Event()

            def probe() -> None:
                with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as pc:
                    i = 0
                    while not stop.is_set():
                        t = time.perf_counter()
                        pc.get(f"/api/v1/machines/m{(i * 37) % n:04d}").raise_for_status()
                        latencies.append(time.perf_counter() - t)
                        i += 1
                        time.sleep(0.05)

            prober = threading.Thread(target=probe)
            prober.start()
            t0 = time.monotonic()
            op = c.post("/api/v1/power", json={"selector": "bench=power", "action": "cycle",
                                               "max_parallel": args.concurrency}).json()
            op = wait_op(c, op)
            wall = time.monotonic() - t0
            stop.set()
            prober.join()
            ok = sum(1 for i in op["items"] if i["status"] == "succeeded")
            reasons: dict[str, int] = {}
            for i in op["items"]:
                if i["error"]:
                    key = i["error"].split(":")[0][:80]
                    reasons[key] = reasons.get(key, 0) + 1
            bulk = span(op)
        finally:
            server.terminate()
            server.wait(20)

        seq = ipmitool_cycle_loop(fleet.endpoints, args.ipmitool_count)
        seq_scaled = seq["total_s"] / seq["count"] * n

    latencies.sort()
    p99 = 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan")
    p50 = 1000 * latencies[len(latencies) // 2] if latencies else float("nan")
    print(f"\n{n} simulated IPMI BMCs (pyghmi, settle {args.settle}s), concurrency {args.concurrency}")
    print(f"{'what':<52}{'seconds':>10}{'ratio':>10}")
    print(f"{'bronze bulk cycle, verified (operation span)':<52}{bulk:>10.1f}{'':>10}")
    print(f"{'  wall time seen by the client':<52}{wall:>10.1f}")
    print(f"{'ideal: slowest single cycle x ceil(N/C)':<52}{ideal:>10.1f}{bulk / ideal:>9.2f}x")
    print(f"{'  slowest / median single verified cycle':<52}{slowest:>10.2f}{sorted(singles)[5]:>10.2f}")
    seq_label = f"ipmitool sequential loop, {seq['count']} BMCs scaled to {n}"
    print(f"{seq_label:<52}{seq_scaled:>10.1f}{seq_scaled / bulk:>9.1f}x faster")
    print(f"succeeded: {ok}/{n};  GET /machines/{{name}} during the run: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
          f"({len(latencies)} requests)")
    for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
        print(f"  failed x{count}: {reason}")


if __name__ == "__main__":
    main()
