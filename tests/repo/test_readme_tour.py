"""README.md's "A 5-minute tour" runs as written on a fresh checkout.

The shell block under that heading is taken from README.md and run by ``bash -euo pipefail``
(any failing line fails the test) in a directory that looks like a fresh checkout: ``.venv``
(the virtualenv running the tests, with its test extras) and nothing else, so the data directory
is new. The harness only picks free loopback ports (``BRONZE_API_PORT``, ``BMC_PORT``, the agent
API ports) and isolates HOME and ``BRONZE_*`` from the caller; the block starts and stops its own
``bronze serve`` and sushy-emulator, and must leave nothing running.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.wait import eventually


def tour_block(readme: str) -> str:
    """The first ```sh block after the '## A 5-minute tour' heading."""
    section = readme.split("## A 5-minute tour", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"^```sh\n(.*?)^```$", section, re.S | re.M)
    assert match, "no ```sh block in the tour section"
    return match.group(1)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_readme_tour_runs_as_written(tmp_path: Path) -> None:
    block = tour_block((ROOT / "README.md").read_text())
    assert "bronze serve" in block
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / ".venv").symlink_to(Path(sys.prefix))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRONZE_")}
    env.update(
        HOME=str(tmp_path / "home"),
        BRONZE_API_PORT=str(free_port()),
        BMC_PORT=str(free_port()),
        BRONZE_AGENT_ENROLL_PORT=str(free_port()),
        BRONZE_AGENT_SESSION_PORT=str(free_port()),
    )
    log = tmp_path / "tour.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=checkout,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: whatever it leaves is ours to stop
        )
        leftover = False
        try:
            rc = proc.wait(timeout=240)
            try:  # the tour stops what it started
                eventually(lambda: not group_alive(proc.pid), 30)
            except AssertionError:
                leftover = True
        finally:
            if group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    output = log.read_text(errors="replace")
    assert rc == 0, f"the tour failed (exit {rc}); its output:\n{output[-6000:]}"
    assert not leftover, "the tour left processes running"
    assert (checkout / ".bronze-data" / "admin.token").exists()
