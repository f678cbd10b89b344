"""Power-on -> agent enrolled on a one-VM lab (SeaBIOS + iPXE, TCG): issue 13's 20 s figure.

    sudo flock /var/lock/bronze-heavy.lock .venv/bin/python -m bench.labboot

``bronze lab up --machines 1 --ipmi 1 --firmware bios`` (the image built or reused from the
cache), then ``bronze boot-device set --device pxe --once --legacy`` and ``bronze power on``
through the VM's IPMI BMC, and ``bronze agent show`` every 0.5 s until the agent is enrolled and
connected. Printed: every event from the power request on (bronze's own timestamps, seconds
after the ``power.succeeded`` event, which the stage measures from), the agent's ``hello_at``
and the stamps ``/init`` wrote on the serial console (seconds since the kernel started).
``bronze lab down`` at the end, also after a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.lab.support import LabCli
from tests.lab.test_stage import Stage, _t, _timeline

INIT_STAMP = re.compile(r"bronze init: \[([0-9.]+)\] (.*)")


def _wait_enrolled(stage: Stage, name: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agent = stage.json("agent", "show", name)
        if agent.get("enrolled") and agent.get("connected"):
            return dict(agent)
        time.sleep(0.5)
    raise TimeoutError(f"{name} not enrolled after {timeout} s\n{stage.diagnostics()}")


def _run(stage: Stage, name: str, console: Path) -> None:
    for op in stage.json("boot-device", "set", name, "--device", "pxe", "--once", "--legacy"):
        assert op["status"] == "succeeded", op
    load = os.getloadavg()[0]
    for op in stage.json("power", "on", name):
        assert op["status"] == "succeeded", op
    agent = _wait_enrolled(stage, name, 600)
    tl = _timeline(stage, name)
    on = max(i for i, e in enumerate(tl) if e["kind"] == "power.succeeded")
    asked = max((i for i, e in enumerate(tl[:on]) if e["kind"] == "power.requested"), default=on)
    t_on = _t(tl[on].get("time") or tl[on]["at"])
    print(f"\nload {load:.2f} at power-on, {os.getloadavg()[0]:.2f} at enrolled")
    print(f"{'event':40} {'s after power.succeeded':>16}")
    for e in tl[asked:]:
        print(f"{e['kind']:40} {_t(e.get('time') or e['at']) - t_on:16.1f}")
    print(f"{'agent hello (enrolled, session open)':40} {_t(agent['hello_at']) - t_on:16.1f}")
    text = console.read_bytes().decode("latin-1", "replace").replace("\r", "")
    print("console (/init's stamps: seconds since the kernel started):")
    for line in text.splitlines():
        m = INIT_STAMP.search(line)
        if m:
            print(f"  {float(m.group(1)):7.2f}  {m.group(2)[:100]}")
        elif "enrolled machine=" in line or "Unpacking initramfs" in line:
            print(f"           {line.strip()[:110]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--subnet", default="10.98.203.0/24")
    a = p.parse_args()
    state = Path(tempfile.mkdtemp(prefix="bronze-labboot-", dir="/var/lib"))
    state.rmdir()  # lab up makes it
    lab = LabCli("bzbt", a.subnet, state)
    try:
        t0 = time.monotonic()
        res = lab.run("up", "--machines", "1", "--ipmi", "1", "--firmware", "bios", "-o", "json")
        if res.returncode != 0:
            print(res.stderr[-3000:], file=sys.stderr)
            return 1
        up = json.loads(res.stdout)
        print(f"lab up {time.monotonic() - t0:.0f} s, image {up['image']}")
        stage = Stage(lab, up)
        name = next(iter(stage.vms))
        console = Path(stage.vms[name]["console"])
        _run(stage, name, console)
    finally:
        res = lab.run("down", timeout=180)
        print(f"lab down: {'ok' if res.returncode == 0 else res.stderr[-500:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
