"""bench/bmc_sim.py starts a fleet of simulated BMCs and times cycle loops (bench is a package run
from the repository root, so the test imports it like any module)."""

from __future__ import annotations

from pathlib import Path

from bench import bmc_sim
from tests.peers import bmc_peers as peers


def test_fleet_serves_distinct_bmcs_and_loops_time_them() -> None:
    sim = bmc_sim
    with sim.sim_fleet(processes=2, per_process=3, settle=0.05) as fleet:
        ports = {e.port for e in fleet.endpoints}
        assert len(ports) == 6 and all(e.address == "127.0.0.1" for e in fleet.endpoints)
        pids = fleet.pids
        assert all(peers.udp_answers(e.address, e.port) for e in fleet.endpoints)
        ipmitool = sim.ipmitool_cycle_loop(fleet.endpoints, 3)
        bronze = sim.controller_cycle_loop(fleet.endpoints, 3)
        assert ipmitool["count"] == bronze["count"] == 3
        assert ipmitool["total_s"] > 0 and bronze["total_s"] > 0
    for pid in pids:  # stopped by PID on exit
        assert (
            not Path(f"/proc/{pid}").exists()
            or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        )
