"""A simulated machine's apply alone: CPU per ``ApplyConfig`` as ``bronze-agent simulate`` runs it.

    .venv/bin/python -m bench.apply --machines 300 --rounds 4

Builds ``--machines`` sandbox roots like the simulator (hard-linked copies of the qemu-vm
fixture under ``--work-dir``, default ``/dev/shm``), then applies the bench's fleet config
(``bench.agents``: alternating generations, one machine patch each) to every machine
``--rounds`` times through the agent's own path (``Commands._apply`` and the journal write,
``fsync`` off as in the simulator). No gRPC, no server: what is left is the file work a
10,000-agent rollout asks of the simulators (``docs/performance.md``, round 3). ``--profile``
prints cProfile's top lines.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import tempfile
import time
from pathlib import Path

from agent.apply import ConfigApplier
from agent.commands import Commands, Journal
from agent.gen import agent_pb2 as pb
from agent.simulate import make_root
from bench.agents import ROOT, default_work_dir, fleet_patch, machine_patch
from server.config import render


class _Machine:
    """What ``Commands._apply`` reads of an agent."""

    def __init__(self, root: Path) -> None:
        state = root / "var/lib/bronze"
        self.applier = ConfigApplier(root, state, fsync=False)
        self.journal = Journal(state / "journal.json", fsync=False)
        self.sim = ""
        self.commands = Commands(self)  # type: ignore[arg-type]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--machines", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--work-dir", default=default_work_dir())
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bronze-apply-", dir=args.work_dir))
    try:
        template = work / "template"
        shutil.copytree(ROOT / "agent/fixtures/qemu-vm", template, symlinks=True)
        docs = [render([fleet_patch(g), machine_patch("sim-00001", 1)], {}) for g in (1, 2)]
        machines = []
        for i in range(args.machines):
            root = work / f"m{i}" / "root"
            make_root(template, root)
            machines.append(_Machine(root))
        seq = 0

        def one_round(gen: int) -> None:
            nonlocal seq
            doc = docs[gen % 2]
            ac = pb.ApplyConfig(
                version=doc.version, config_json=doc.canonical_json, mode=pb.APPLY_MODE_AUTO
            )
            for m in machines:
                seq += 1
                result = m.commands._apply(f"c{seq}", ac)
                if not result.ok:
                    raise SystemExit(f"apply failed: {result.error}")
                m.journal.put(result)

        one_round(0)  # the first apply writes every file
        prof = cProfile.Profile() if args.profile else None
        t0, c0 = time.perf_counter(), time.process_time()
        if prof is not None:
            prof.enable()
        for gen in range(1, args.rounds + 1):
            one_round(gen)
        if prof is not None:
            prof.disable()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = args.machines * args.rounds
        print(f"{'applies':24} {n:>10}")
        print(f"{'cpu per apply (ms)':24} {1000 * cpu / n:>10.3f}")
        print(f"{'wall per apply (ms)':24} {1000 * wall / n:>10.3f}")
        if prof is not None:
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
