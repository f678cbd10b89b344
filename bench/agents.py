"""Agent fleet benchmark: N simulated agents, each on its own TCP+mTLS connection, one server.

    .venv/bin/python -m bench.agents --count 2000 --procs 2 --heartbeat 30 --idle 30
    .venv/bin/python -m bench.agents --count 10000 --procs 2 --idle 30   # issue 15's target

``--ramp`` defaults to one agent start per 10 ms (20 s for 2,000, 100 s for 10,000): the same
enrollment rate at every size, so a larger fleet measures sessions, not an enrollment storm. The
simulated machines' roots go under ``--work-dir`` (default ``/dev/shm``: :func:`default_work_dir`).

This process *is* the server (agent API + in-memory store); the agents run in ``--procs``
``bronze-agent simulate`` processes. It measures:

* time for all agents to enroll and connect (ramped over ``--ramp`` seconds);
* **fleet-wide patch rollout**: change a fleet patch, render every machine's config (each has its
  own machine patch, so 2,000 distinct versions), push, and time until every agent reported the
  new version applied (target <= 5 s for 2,000, <= 10 s for 10,000);
* the CPU time the server and the simulators used during the measured rollout: on a machine
  whose cores they share, ``(server + agents) / cores`` is the least the rollout can take;
* server RSS (current and peak; target <= 600 MiB for 2,000, <= 1.5 GiB for 10,000);
* idle heartbeat cost: server and agent CPU over ``--idle`` seconds, per heartbeat (target for
  10,000: server <= 15 % of a core);
* server restart: time until every agent has reconnected to the new server, then a rollout.

Prints a table; also writes JSON to bench/results/agents-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from server.agents import AgentApiServer, MemoryAgentStore
from server.agents.pki import FleetCA
from server.config import Layer, Patch, render

ROOT = Path(__file__).resolve().parents[1]

CLK = os.sysconf("SC_CLK_TCK")


def default_work_dir() -> str | None:
    """tmpfs when there is one. Each simulated machine's apply renames a handful of small files
    over old ones; on the one shared ext4 disk of a VM that costs ~1 ms per rename (ext4 starts
    the new file's writeback on a replacing rename), and 10,000 machines' applies then bind the
    rollout figure on the simulators' disk, not on the server. A real fleet has a disk per
    machine."""
    shm = Path("/dev/shm")  # noqa: S108 - mkdtemp makes a private (0700) directory in it
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def rss_mib(pid: int | str = "self") -> tuple[float, float]:
    cur = peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            cur = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cur, peak


def cpu_seconds(pid: int | str = "self") -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


async def wait_until(pred, timeout: float, interval: float = 0.02) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    while not pred():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError
        await asyncio.sleep(interval)
    return time.perf_counter() - t0


def progress(**figures: float) -> None:
    """Print a phase's figures as soon as it ends (a later phase may still fail)."""
    print(" ".join(f"{k}={v:.2f}" for k, v in figures.items()), flush=True)


def fleet_patch(generation: int) -> Patch:
    return Patch(
        "fleet",
        Layer.FLEET,
        {
            "sysctls": {"vm.swappiness": str(generation), "net.core.somaxconn": "4096"},
            "time": {"servers": ["ntp1.example.net", "ntp2.example.net"]},
            "network": {"dns": {"nameservers": ["10.0.0.53"], "search": ["lab.example.net"]}},
            "files": {"/etc/motd": {"content": f"bronze fleet generation {generation}\n"}},
        },
    )


def machine_patch(mid: str, i: int) -> Patch:
    return Patch(
        f"machine:{mid}",
        Layer.MACHINE,
        {
            "hostname": mid,
            "network": {"links": {"enp0s3": {"addresses": [f"10.{i // 250}.{i % 250}.10/16"]}}},
        },
    )


class GcClock:
    """Seconds the cyclic GC ran in this process, by generation (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.seconds[info["generation"]] += time.perf_counter() - self._t0


GC = GcClock()


async def rollout(
    api: AgentApiServer, store: MemoryAgentStore, ids: list[str], gen: int, timeout: float
) -> tuple[float, float, float, float]:
    """Render + push generation ``gen`` to every machine; returns (push_s, total_s, and of the
    push: the event-loop thread's CPU seconds, the seconds of GC)."""
    t0, c0, g0 = time.perf_counter(), time.thread_time(), sum(GC.seconds)
    fleet = fleet_patch(gen)
    want = {}
    for i, mid in enumerate(ids):
        r = render([fleet, machine_patch(mid, i)], {})
        want[mid] = r.version
        await api.hub.push_config(mid, r.version, r.canonical_json)
    push = time.perf_counter() - t0
    push_cpu, push_gc = time.thread_time() - c0, sum(GC.seconds) - g0
    await wait_until(all_applied(store, want), timeout)
    return push, time.perf_counter() - t0, push_cpu, push_gc


def all_applied(store: MemoryAgentStore, want: dict[str, str]) -> Callable[[], bool]:
    """A check that every machine in ``want`` reported its version, which resumes where the
    previous check stopped: ``all()`` over the 10,000 from the start at every 20 ms tick took
    up to 0.6 ms each (up to 3 % of a core in this process, the server's, during the rollout)."""
    left = deque(want.items())

    def check() -> bool:
        while left and store.applied.get(left[0][0]) == left[0][1]:
            left.popleft()
        return not left

    return check


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="bronze-bench-", dir=args.work_dir))
    if GC not in gc.callbacks:
        gc.callbacks.append(GC)
    procs: list[subprocess.Popen[bytes]] = []
    api: AgentApiServer | None = None
    try:
        store = MemoryAgentStore()
        ca = FleetCA.load_or_create(work / "ca")
        api = AgentApiServer(store, ca, heartbeat_interval=args.heartbeat)
        await api.start()
        ids = [f"sim-{i:05d}" for i in range(args.count)]
        tokens = {}
        for mid in ids:
            store.add_machine(mid)
            tokens[mid] = await api.tokens.issue(mid, "bench")
        (work / "ca.pem").write_bytes(ca.cert_pem)
        template = work / "template"
        shutil.copytree(ROOT / "agent/fixtures/qemu-vm", template, symlinks=True)
        rss_idle_server = rss_mib()[0]

        per = (len(ids) + args.procs - 1) // args.procs
        agent_bin = Path(sys.executable).with_name("bronze-agent")
        t_start = time.perf_counter()
        for p in range(args.procs):
            chunk = dict(list(tokens.items())[p * per : (p + 1) * per])
            tf = work / f"tokens-{p}.json"
            tf.write_text(json.dumps(chunk))
            log = open(work / f"sim-{p}.log", "wb")  # noqa: SIM115
            procs.append(
                subprocess.Popen(
                    [
                        str(agent_bin),
                        "simulate",
                        "--count",
                        str(len(chunk)),
                        "--root-template",
                        str(template),
                        "--work",
                        str(work / f"sim-{p}"),
                        "--server",
                        f"127.0.0.1:{api.session_port}",
                        "--enroll",
                        f"127.0.0.1:{api.enroll_port}",
                        "--ca",
                        str(work / "ca.pem"),
                        "--tokens",
                        str(tf),
                        "--heartbeat",
                        str(args.heartbeat),
                        "--ramp",
                        str(args.ramp),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()
        connect_s = await wait_until(
            lambda: len(api.hub.connected()) == len(ids), args.ramp + 300, 0.1
        )
        connect_s = time.perf_counter() - t_start
        progress(connect_all_s=connect_s, server_rss_mib=rss_mib()[0])

        # Warm-up rollout (first apply writes every file), then the measured one.
        _, warm_total, *_ = await rollout(api, store, ids, 1, 120)
        await asyncio.sleep(1)
        r_srv, r_sims = cpu_seconds(), sum(cpu_seconds(p.pid) for p in procs)
        r_gc = sum(GC.seconds)
        push_s, total_s, push_cpu, push_gc = await rollout(api, store, ids, 2, 120)
        r_srv, r_sims = cpu_seconds() - r_srv, sum(cpu_seconds(p.pid) for p in procs) - r_sims
        r_gc = sum(GC.seconds) - r_gc
        progress(
            rollout_first_s=warm_total,
            rollout_push_s=push_s,
            rollout_push_loop_cpu_s=push_cpu,
            rollout_push_gc_s=push_gc,
            rollout_total_s=total_s,
            rollout_server_cpu_s=r_srv,
            rollout_server_gc_s=r_gc,
            rollout_agents_cpu_s=r_sims,
        )

        # Idle: heartbeats only.
        await asyncio.sleep(2)
        hb0 = api.hub.counters["heartbeat"]
        s0 = cpu_seconds()
        a0 = sum(cpu_seconds(p.pid) for p in procs)
        t0 = time.perf_counter()
        await asyncio.sleep(args.idle)
        dt_ = time.perf_counter() - t0
        hbs = api.hub.counters["heartbeat"] - hb0
        s_cpu = cpu_seconds() - s0
        a_cpu = sum(cpu_seconds(p.pid) for p in procs) - a0
        rss, hwm = rss_mib()
        progress(server_idle_cpu_pct=100 * s_cpu / dt_, heartbeats=hbs, rss=rss, peak=hwm)

        # Server restart: every agent reconnects (backoff + jitter) to a fresh hub.
        ports = (api.enroll_port, api.session_port)
        await api.stop(0)
        t0 = time.perf_counter()
        api = AgentApiServer(
            store,
            ca,
            enroll_port=ports[0],
            session_port=ports[1],
            heartbeat_interval=args.heartbeat,
        )
        await api.start()
        await wait_until(lambda: len(api.hub.connected()) == len(ids), 300, 0.05)
        reconnect_s = time.perf_counter() - t0
        progress(restart_reconnect_all_s=reconnect_s)
        after_restart_s: float | None = None
        try:
            _, after_restart_s, *_ = await rollout(api, store, ids, 3, 120)
        except TimeoutError:  # reported as missing, not lost with everything measured before
            print("rollout after restart: not all applied within 120 s", flush=True)
        sims_rss = sum(rss_mib(p.pid)[0] for p in procs)
        return {
            "agents": len(ids),
            "connections": len(api.hub.connected()),
            "sim_processes": args.procs,
            "connect_all_s": round(connect_s, 2),
            "ramp_s": args.ramp,
            "rollout_first_s": round(warm_total, 2),
            "rollout_push_s": round(push_s, 2),
            "rollout_push_loop_cpu_s": round(push_cpu, 2),
            "rollout_push_gc_s": round(push_gc, 2),
            "rollout_total_s": round(total_s, 2),
            "rollout_server_cpu_s": round(r_srv, 2),
            "rollout_server_gc_s": round(r_gc, 2),
            "rollout_agents_cpu_s": round(r_sims, 2),
            "server_rss_before_agents_mib": round(rss_idle_server, 1),
            "server_rss_mib": round(rss, 1),
            "server_rss_peak_mib": round(hwm, 1),
            "agents_rss_mib_total": round(sims_rss, 1),
            "heartbeat_interval_s": args.heartbeat,
            "idle_window_s": round(dt_, 1),
            "heartbeats": hbs,
            "heartbeats_per_s": round(hbs / dt_, 1),
            "server_idle_cpu_pct": round(100 * s_cpu / dt_, 2),
            "server_cpu_us_per_heartbeat": round(1e6 * s_cpu / hbs, 1) if hbs else None,
            "agents_idle_cpu_pct": round(100 * a_cpu / dt_, 2),
            "restart_reconnect_all_s": round(reconnect_s, 2),
            "rollout_after_restart_s": (
                round(after_restart_s, 2) if after_restart_s is not None else None
            ),
            "maxrss_self_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        if api is not None:
            await api.stop(0)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--procs", type=int, default=2, help="simulator processes")
    ap.add_argument("--heartbeat", type=float, default=30.0)
    ap.add_argument("--ramp", type=float, default=None, help="seconds (default count/100)")
    ap.add_argument("--idle", type=float, default=30.0)
    ap.add_argument(
        "--work-dir",
        default=default_work_dir(),
        help="where the simulated machines' roots go (default: /dev/shm when there is one)",
    )
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if args.ramp is None:
        args.ramp = args.count / 100
    res = asyncio.run(main_async(args))
    big = args.count > 2000
    targets = {
        "rollout_total_s": ("<=", 10.0 if big else 5.0),
        "server_rss_peak_mib": ("<=", 1536.0 if big else 600.0),
        "server_idle_cpu_pct": ("<=", 15.0),
    }
    print(f"{'metric':34} {'value':>12}  target")
    print("-" * 60)
    for k, v in res.items():
        t = targets.get(k)
        mark = ""
        if t and isinstance(v, int | float):
            mark = f"{t[0]} {t[1]:g}  " + ("OK" if v <= t[1] else "MISSED")
        print(f"{k:34} {v!s:>12}  {mark}")
    out = ROOT / "bench/results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"agents-{int(time.time())}.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
