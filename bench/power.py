"""Power benchmark (issue: power plane). Not a test: prints a table.

1,000 machines behind simulated IPMI BMCs (10 processes x 100 BMCs on 127.0.0.1, see
bench/bmc_sim.py; ``--sim pyghmi`` for the pyghmi simulator of the tests) are power-cycled
with verification through the bulk API of a real `bronze serve`. Reported beside:
  - the ideal: the slowest single verified cycle (measured alone, through the API) x ceil(N / C),
    C = max_parallel = BRONZE_BMC_MAX_CONCURRENCY;
  - a sequential `ipmitool -I lanplus -C 3 chassis power cycle` loop over 50 BMCs, scaled to N.
While the bulk operation runs, a probe thread times GET /api/v1/machines/{name} (p99); the same
probe runs first with no operation, as the baseline of this machine at this moment. The bulk
cycle runs `--rounds` times: the first opens a session per BMC, the next reuse them. CPU per
verified cycle is read from /proc for the server, the simulators and the whole machine (other
users' work included: the load average before the run is printed).
Targets: <= 1.25x ideal, >= 20x faster than the ipmitool loop, API p99 < 100 ms.

    .venv/bin/python -m bench.power [--processes 10 --per-process 100 --concurrency 64]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.bmc_sim import ipmitool_cycle_loop, sim_fleet
from bench.profile import Sampler, top
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[1]


def wait_op(c: httpx.Client, op: dict, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while op["status"] in ("queued", "running"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"operation {op['id']} did not finish")
        time.sleep(0.5)  # a 1,000-item operation is a large document: poll it gently
        op = c.get(f"/api/v1/operations/{op['id']}").json()
    return op


def span(op: dict) -> float:
    return (
        datetime.fromisoformat(op["finished_at"]) - datetime.fromisoformat(op["created_at"])
    ).total_seconds()


@dataclass
class Run:
    """What one bench run measured, for :func:`report`."""

    n: int
    load_before: list[str]
    load_after: list[str] = field(default_factory=list)
    singles: list[float] = field(default_factory=list)
    ideal: float = float("nan")
    idle: list[float] = field(default_factory=list)
    probe_ms: float = float("nan")
    rounds: list[dict[str, Any]] = field(default_factory=list)
    seq: dict[str, Any] | None = None
    seq_scaled: float = float("nan")
    seq_cpu_ms: float = float("nan")


def main() -> None:
    args = parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    run = Run(n=args.processes * args.per_process, load_before=loadavg())
    password = "bench-pw-3e9a"  # noqa: S105 - simulated BMCs only
    with (
        tempfile.TemporaryDirectory() as tmp,
        sim_fleet(
            args.processes, args.per_process, args.settle, password=password, kind=args.sim
        ) as fleet,
    ):
        port = free_port()
        while port in {ep.port for ep in fleet.endpoints}:  # refused as a BMC's: bronze's own
            port = free_port()
        token = "brz_" + os.urandom(24).hex()
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("bronze")), "serve"],
            env=server_env(tmp, port, token, args.concurrency),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            c = httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
            )
            wait_healthy(c)
            register(c, fleet.endpoints)
            single_cycles(c, run, args.concurrency)
            bulk_rounds(c, base, token, run, args, server.pid, fleet.pids)
        finally:
            server.terminate()
            server.wait(20)
        ipmitool_baseline(fleet.endpoints, args.ipmitool_count, run)
    report(args, run)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=10)
    ap.add_argument("--per-process", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument(
        "--settle", type=float, default=0.2, help="simulated BMC power settle delay (s)"
    )
    ap.add_argument("--ipmitool-count", type=int, default=50, help="0 skips the ipmitool loop")
    ap.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="bulk cycles in a row; from the second on, BMC sessions are kept (reused)",
    )
    ap.add_argument(
        "--sim",
        choices=("lean", "pyghmi"),
        default="lean",
        help="simulated BMCs: bench/ipmi_sim.py (default) or the pyghmi one of the tests",
    )
    ap.add_argument(
        "--profile",
        type=Path,
        help="directory for py-spy collapsed stacks of each bulk round: the server and one "
        "simulator process (server-K.txt, sim-K.txt); their top lines are printed",
    )
    return ap.parse_args()


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def server_env(tmp: str, port: int, token: str, concurrency: int) -> dict[str, str]:
    return {
        **os.environ,
        "BRONZE_DATA_DIR": tmp,
        "BRONZE_API_PORT": str(port),
        "BRONZE_ADMIN_TOKEN": token,
        "BRONZE_BMC_NETWORKS": "127.0.0.0/8",
        "BRONZE_BMC_PORTS": "1-65535",  # the simulated BMCs listen on free ports
        "BRONZE_POWER_SYNC_ENABLED": "false",
        "BRONZE_BMC_MAX_CONCURRENCY": str(concurrency),
        "BRONZE_BMC_MIN_INTERVAL": "0",
        "BRONZE_BMC_POLL_INTERVAL": "0.1",
        "BRONZE_BMC_SETTLE_TIMEOUT": "30",
        "BRONZE_LOG_LEVEL": "warning",
    }


def wait_healthy(c: httpx.Client) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            c.get("/healthz")
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def register(c: httpx.Client, endpoints: list[Any]) -> None:
    t0 = time.monotonic()
    for i, ep in enumerate(endpoints):
        r = c.post(
            "/api/v1/machines",
            json={
                "name": f"m{i:04d}",
                "nics": [{"mac": f"02:10:00:00:{i >> 8:02x}:{i & 255:02x}"}],
                "labels": {"bench": "power"},
                "bmc": {
                    "driver": "ipmi",
                    "address": f"{ep.address}:{ep.port}",
                    "username": ep.username,
                    "password": ep.password,
                },
            },
        )
        if r.status_code >= 400:
            print(r.text, file=sys.stderr)
        r.raise_for_status()
    print(f"registered {len(endpoints)} machines in {time.monotonic() - t0:.1f}s", file=sys.stderr)


def single_cycles(c: httpx.Client, run: Run, concurrency: int) -> None:
    """Ten verified cycles one at a time: the ideal is the slowest x ceil(N / C)."""
    n = run.n
    for i in range(10):
        op = wait_op(
            c,
            c.post(f"/api/v1/machines/m{i * (n // 10):04d}/power", json={"action": "cycle"}).json(),
        )
        assert op["status"] == "succeeded", op
        run.singles.append(span(op))
    run.ideal = max(run.singles) * math.ceil(n / concurrency)


def bulk_rounds(
    c: httpx.Client,
    base: str,
    token: str,
    run: Run,
    args: argparse.Namespace,
    server_pid: int,
    sim_pids: list[int],
) -> None:
    """The probe alone (the baseline), then the bulk rounds, each sampled when profiling."""
    cpu_idle = proc_cpu(server_pid)
    run.idle = probe_latencies(base, token, run.n, 4.0)  # the probe with no operation running
    run.probe_ms = 1000 * (proc_cpu(server_pid) - cpu_idle) / max(len(run.idle), 1)
    where = args.profile
    for k in range(args.rounds):
        with (
            Sampler(server_pid, where / f"server-{k}.txt" if where else None, 200),
            Sampler(sim_pids[0], where / f"sim-{k}.txt" if where else None, 200),
        ):
            run.rounds.append(
                bulk_cycle(c, base, token, run.n, args.concurrency, server_pid, sim_pids)
            )
    run.load_after = loadavg()


def ipmitool_baseline(endpoints: list[Any], count: int, run: Run) -> None:
    """The sequential ipmitool loop over ``count`` BMCs, scaled to N, and its CPU per cycle."""
    if not count:
        return
    rusage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    run.seq = ipmitool_cycle_loop(endpoints, count)
    rusage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    run.seq_scaled = run.seq["total_s"] / run.seq["count"] * run.n
    run.seq_cpu_ms = (
        1000 * (rusage1.ru_utime + rusage1.ru_stime - rusage0.ru_utime - rusage0.ru_stime) / count
    )


def report(args: argparse.Namespace, run: Run) -> None:
    n, idle, ideal, seq_scaled = run.n, run.idle, run.ideal, run.seq_scaled
    print(
        f"\n{n} simulated IPMI BMCs ({args.sim}, settle {args.settle}s), "
        f"concurrency {args.concurrency}; "
        f"load average before: {run.load_before}, after the bulk rounds: {run.load_after}"
    )
    print(f"{'what':<56}{'seconds':>9}{'ratio':>9}")
    print(
        f"GET /machines/{{name}} with no operation running: p50 {pct(idle, 0.5):.1f} ms, "
        f"p99 {pct(idle, 0.99):.1f} ms ({len(idle)} requests, "
        f"{run.probe_ms:.1f} ms of server CPU each)"
    )
    print(f"{'ideal: slowest single verified cycle x ceil(N/C)':<56}{ideal:>9.2f}")
    slowest, median = max(run.singles), sorted(run.singles)[5]
    print(f"{'  slowest / median single verified cycle':<56}{slowest:>9.2f}{median:>9.2f}")
    seq_label = f"ipmitool sequential loop, {args.ipmitool_count} BMCs scaled to {n}"
    print(f"{seq_label:<56}{seq_scaled:>9.2f}")
    for k, r in enumerate(run.rounds):
        report_round(k, r, run)
    if args.profile:
        for k in range(args.rounds):
            for who in ("server", "sim"):
                print(f"profile {who}, round {k} (inclusive share of GIL-holding samples):")
                for share, fn in top(args.profile / f"{who}-{k}.txt", 20):
                    print(f"  {share:5.1f} %  {fn}")
    if run.seq:
        print(
            f"ipmitool CPU per (unverified) cycle: {run.seq_cpu_ms:.2f} ms "
            "(ipmitool processes only)"
        )


def report_round(k: int, r: dict[str, Any], run: Run) -> None:
    n = run.n
    label = "bronze bulk cycle, verified, " + ("new sessions" if k == 0 else "sessions kept")
    print(
        f"{label:<56}{r['span']:>9.2f}{r['span'] / run.ideal:>8.2f}x ideal, "
        f"{run.seq_scaled / r['span']:.1f}x ipmitool"
    )
    print(
        f"  succeeded {r['ok']}/{n}; wall seen by the client {r['wall']:.2f} s; "
        f"GET /machines/{{name}} p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms "
        f"({r['requests']} requests)"
    )
    own = r["cpu_server_ms"] - run.probe_ms * r["requests"] / n
    print(
        f"  CPU per verified cycle: bronze {r['cpu_server_ms']:.2f} ms "
        f"({own:.2f} ms without serving the "
        f"probe), simulators {r['cpu_sims_ms']:.2f} ms, whole machine {r['cpu_all_ms']:.2f} ms "
        f"(2 cores: {r['busy']:.0%} busy)"
    )
    b = r.get("items")
    if b:
        print(
            f"  items: BMC operation p50 {b['bmc_p50']:.3f} s, max {b['bmc_max']:.3f} s; "
            f"around it (start write to result write) p50 {1000 * b['around_p50']:.0f} ms, "
            f"p90 {1000 * b['around_p90']:.0f} ms; first start +{1000 * b['first']:.0f} ms, "
            f"last result to end {1000 * b['tail']:.0f} ms; places busy {b['busy']:.0%} "
            f"of C x span"
        )
    for reason, count in sorted(r["reasons"].items(), key=lambda kv: -kv[1]):
        print(f"  failed x{count}: {reason}")


def item_breakdown(op: dict, concurrency: int) -> dict[str, float] | None:
    """Where an operation's span went, from its items: the BMC operations' own time (``result
    .elapsed_s``), the time around them (an item's start is stamped before its start write,
    its end by its result write), how long the first start and the end took, and how busy the
    ``concurrency`` places were over the span (item time / (C x span))."""
    items = [i for i in op["items"] if i["started_at"] and i["finished_at"] and i["result"]]
    if not items:
        return None
    at = datetime.fromisoformat
    created, finished = at(op["created_at"]), at(op["finished_at"])
    starts = [at(i["started_at"]) for i in items]
    ends = [at(i["finished_at"]) for i in items]
    walls = [(e - s).total_seconds() for s, e in zip(starts, ends, strict=True)]
    bmc = [float(i["result"].get("elapsed_s", 0.0)) for i in items]
    around = sorted(w - b for w, b in zip(walls, bmc, strict=True))
    total = (finished - created).total_seconds()
    return {
        "bmc_p50": sorted(bmc)[len(bmc) // 2],
        "bmc_max": max(bmc),
        "around_p50": around[len(around) // 2],
        "around_p90": around[int(0.9 * (len(around) - 1))],
        "first": (min(starts) - created).total_seconds(),
        "tail": (finished - max(ends)).total_seconds(),
        "busy": sum(walls) / max(concurrency * total, 1e-9),
    }


def probe(base: str, token: str, n: int, latencies: list[float], stop: threading.Event) -> None:
    """GET /api/v1/machines/{name} of changing machines, 50 per second, until ``stop``."""
    with httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as pc:
        i = 0
        while not stop.is_set():
            t = time.perf_counter()
            pc.get(f"/api/v1/machines/m{(i * 37) % n:04d}").raise_for_status()
            latencies.append(time.perf_counter() - t)
            i += 1
            time.sleep(0.02)


def probe_latencies(base: str, token: str, n: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(target=probe, args=(base, token, n, latencies, stop))
    prober.start()
    time.sleep(seconds)
    stop.set()
    prober.join()
    return latencies


def pct(latencies: list[float], q: float) -> float:
    """The ``q`` quantile in milliseconds."""
    ordered = sorted(latencies)
    return 1000 * ordered[int(q * (len(ordered) - 1))] if ordered else float("nan")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (every process, every user)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = values[3] + values[4]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / tick, sum(values) / tick


def bulk_cycle(
    c: httpx.Client,
    base: str,
    token: str,
    n: int,
    concurrency: int,
    server_pid: int,
    sim_pids: list[int],
) -> dict[str, Any]:
    """One verified bulk cycle of every machine while a probe times GET /machines/{name}."""
    latencies: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(target=probe, args=(base, token, n, latencies, stop))
    prober.start()
    cpu0 = proc_cpu(server_pid), sum(proc_cpu(p) for p in sim_pids), machine_cpu()
    t0 = time.monotonic()
    op = c.post(
        "/api/v1/power",
        json={"selector": "bench=power", "action": "cycle", "max_parallel": concurrency},
    ).json()
    op = wait_op(c, op)
    wall = time.monotonic() - t0
    cpu1 = proc_cpu(server_pid), sum(proc_cpu(p) for p in sim_pids), machine_cpu()
    stop.set()
    prober.join()
    reasons: dict[str, int] = {}
    for i in op["items"]:
        if i["error"]:
            key = re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", "{bmc}", i["error"])  # group by reason
            key = re.sub(r"\d+(\.\d+)?s", "Ns", key)[:160]
            reasons[key] = reasons.get(key, 0) + 1
    busy = cpu1[2][0] - cpu0[2][0]
    return {
        "items": item_breakdown(op, concurrency),
        "span": span(op),
        "wall": wall,
        "reasons": reasons,
        "ok": sum(1 for i in op["items"] if i["status"] == "succeeded"),
        "p50": pct(latencies, 0.5),
        "p99": pct(latencies, 0.99),
        "requests": len(latencies),
        "cpu_server_ms": 1000 * (cpu1[0] - cpu0[0]) / n,
        "cpu_sims_ms": 1000 * (cpu1[1] - cpu0[1]) / n,
        "cpu_all_ms": 1000 * busy / n,
        "busy": busy / max(cpu1[2][1] - cpu0[2][1], 1e-9),
    }


if __name__ == "__main__":
    main()
