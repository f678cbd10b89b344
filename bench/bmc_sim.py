"""A fleet of simulated IPMI BMCs on 127.0.0.1, for power benchmarks.

Starts N processes, each serving M simulated BMCs (``bench/ipmi_sim.py`` by default, or
``tests/peers/bmc_peers.py``'s pyghmi ``SimBmc``: power with a settle delay, boot flags kept
as written) on free UDP ports of 127.0.0.1, and prints their endpoints as JSON.
``bench/power.py`` (server bulk API) reads that JSON. Also times a sequential ``ipmitool``
power-cycle loop (the reference a shell script would be) and the same loop through
``bmc.BmcController``.

    .venv/bin/python -m bench.bmc_sim serve --processes 10 --per-process 100 > endpoints.json
    .venv/bin/python -m bench.bmc_sim cycle-loop --per-process 20 --count 20

The password comes from ``BRONZE_SIM_PASSWORD`` (default ``password``) and reaches the
children and ipmitool through the environment, never argv. Run from the repository root: the
children are ``python -m bench.ipmi_sim`` (or ``tests.peers.bmc_peers``) started there.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCAL = "127.0.0.1"
SIM_MODULES = {"lean": ["bench.ipmi_sim"], "pyghmi": ["tests.peers.bmc_peers", "pyghmi"]}


@dataclass(frozen=True)
class SimEndpoint:
    driver: str
    address: str
    port: int
    username: str
    password: str


@dataclass
class SimFleet:
    endpoints: list[SimEndpoint]
    procs: list[subprocess.Popen[bytes]]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        """Stop the processes this fleet started, by PID."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


def _free_udp_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):  # hold them all, so no duplicates, then release together
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((LOCAL, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


@contextmanager
def sim_fleet(
    processes: int = 10,
    per_process: int = 100,
    settle: float = 0.2,
    username: str = "admin",
    password: str | None = None,
    timeout: float = 60.0,
    events: Path | None = None,
    kind: str = "lean",
) -> Iterator[SimFleet]:
    """Start ``processes`` x ``per_process`` simulated BMCs; stop them on exit. ``kind``:
    ``lean`` (``bench/ipmi_sim.py``, cipher suites 3 and 17, one thread) or ``pyghmi``
    (``tests/peers/bmc_peers.py``, suite 3 only, ~4x the CPU per verified cycle)."""
    if kind not in SIM_MODULES:
        raise ValueError(f"unknown simulator {kind!r}: one of {', '.join(SIM_MODULES)}")
    password = (
        password if password is not None else os.environ.get("BRONZE_SIM_PASSWORD", "password")
    )
    env = dict(os.environ, BRONZE_SIM_PASSWORD=password)
    all_ports = _free_udp_ports(processes * per_process)
    fleet = SimFleet([], [])
    try:
        for i in range(processes):
            ports = all_ports[i * per_process : (i + 1) * per_process]
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    *SIM_MODULES[kind],
                    "--user",
                    username,
                    "--ports",
                    ",".join(map(str, ports)),
                    "--settle",
                    str(settle),
                    *(["--events", str(events)] if events is not None else []),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                start_new_session=True,
            )
            fleet.procs.append(proc)
        deadline = time.monotonic() + timeout
        for proc in fleet.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError(
                    f"simulated BMC process {proc.pid} did not start (exit code {proc.poll()})"
                )
            for port in json.loads(line)["ready"]:
                fleet.endpoints.append(SimEndpoint("ipmi", LOCAL, port, username, password))
        yield fleet
    finally:
        fleet.stop()


def ipmitool_cycle_loop(endpoints: list[SimEndpoint], count: int) -> dict[str, float]:
    """``ipmitool -I lanplus -C 3 -E chassis power cycle`` on the first ``count``
    endpoints, one after the other. Returns timings in seconds."""
    per_call: list[float] = []
    failures = 0
    start = time.monotonic()
    for ep in endpoints[:count]:
        t0 = time.monotonic()
        done = subprocess.run(
            [
                "ipmitool",
                "-I",
                "lanplus",
                "-C",
                "3",
                "-E",
                "-H",
                ep.address,
                "-p",
                str(ep.port),
                "-U",
                ep.username,
                "chassis",
                "power",
                "cycle",
            ],
            env=dict(os.environ, IPMI_PASSWORD=ep.password),
            check=False,
            capture_output=True,
            timeout=30,
        )
        failures += done.returncode != 0
        per_call.append(time.monotonic() - t0)
    total = time.monotonic() - start
    stats = _stats("ipmitool sequential cycle", per_call, total)
    stats["failures"] = failures
    return stats


def controller_cycle_loop(
    endpoints: list[SimEndpoint], count: int, verify: bool = True
) -> dict[str, float]:
    """The same loop through ``bmc.BmcController`` (pre-read + command + read-back)."""
    from bmc import BmcController, BmcEndpoint, DriverKind, PowerAction, PowerPolicy

    ctl = BmcController(policy=PowerPolicy(poll_interval=0.1, min_interval=0.0))
    per_call: list[float] = []
    start = time.monotonic()
    for ep in endpoints[:count]:
        t0 = time.monotonic()
        bep = BmcEndpoint(DriverKind.ipmi, ep.address, ep.port, ep.username, ep.password)
        result = ctl.power_sync(bep, PowerAction.cycle, settle_timeout=10 if verify else 0.0)
        if verify and not result.ok:
            raise RuntimeError(str(result.error))
        per_call.append(time.monotonic() - t0)
    total = time.monotonic() - start
    ctl.close()
    return _stats("bronze BmcController sequential cycle (verified)", per_call, total)


def _stats(name: str, per_call: list[float], total: float) -> dict[str, float]:
    ordered = sorted(per_call)
    n = len(ordered)
    return {
        "name": name,
        "count": n,
        "total_s": round(total, 3),  # type: ignore[dict-item]
        "per_call_mean_ms": round(1000 * total / max(n, 1), 2),
        "per_call_p50_ms": round(1000 * ordered[n // 2], 2) if n else 0.0,
        "per_call_max_ms": round(1000 * ordered[-1], 2) if n else 0.0,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("serve", "cycle-loop"):
        p = sub.add_parser(name)
        p.add_argument("--processes", type=int, default=10 if name == "serve" else 1)
        p.add_argument("--per-process", type=int, default=100 if name == "serve" else 20)
        p.add_argument("--settle", type=float, default=0.2)
        p.add_argument("--user", default="admin")
        if name == "cycle-loop":
            p.add_argument("--count", type=int, default=20)
    args = parser.parse_args(argv)
    with sim_fleet(args.processes, args.per_process, args.settle, args.user) as fleet:
        if args.cmd == "serve":
            print(
                json.dumps({"pids": fleet.pids, "endpoints": [asdict(e) for e in fleet.endpoints]}),
                flush=True,
            )
            stop = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop)
            signal.sigwait(stop)  # then the fleet is stopped by PID on the way out
            return
        results = [
            ipmitool_cycle_loop(fleet.endpoints, args.count),
            controller_cycle_loop(fleet.endpoints, args.count),
        ]
        print(
            json.dumps(
                {"bmcs": len(fleet.endpoints), "settle_s": args.settle, "results": results},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
