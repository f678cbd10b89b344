"""``python -m tests.peers.agent_harness run ...``: ``bronze-agent run`` plus the fault-injection
flags tests need, which the shipped command does not have:

* ``--fault drop-before-result``: drop the session once, after applying a config, before its
  result is sent (the delivery guarantee's worst case);
* ``--clock-offset SECONDS``: a machine whose clock is that far off;
* ``--enroll-timeout SECONDS``: a deadline for ``Enroll`` shorter than the agent's 15 s.
"""

from __future__ import annotations

import argparse
import logging
import sys

from agent.main import add_run_arguments, run_agent, run_options


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="agent_harness")
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    add_run_arguments(run)
    run.add_argument("--fault", default="")
    run.add_argument("--clock-offset", type=float, default=0.0)
    run.add_argument("--enroll-timeout", type=float, default=15.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    opts = run_options(args)
    if isinstance(opts, int):
        return opts
    opts.fault, opts.clock_offset = args.fault, args.clock_offset
    opts.enroll_timeout = args.enroll_timeout
    return run_agent(opts)


if __name__ == "__main__":
    sys.exit(main())
