"""Helpers for the ``bronze lab`` tests: run the CLI, and snapshot what a lab could leave on the
host (links, routes, namespaces, libvirt files, the lab's files, its processes)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from server.lab.state import LIBVIRT_DIRS
from tests.support.procs import BRONZE


class LabCli:
    """``bronze lab ...`` with a test-only name, subnet and state dir (never the default lab)."""

    def __init__(self, name: str, subnet: str, state_dir: Path) -> None:
        self.name, self.subnet, self.state_dir = name, subnet, state_dir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BRONZE_")}

    def args(self, cmd: str, *extra: str) -> list[str]:
        base = [BRONZE, "lab", cmd, "--state-dir", str(self.state_dir)]
        if cmd == "up":
            base += ["--name", self.name, "--subnet", self.subnet]
        return [*base, *extra]

    def run(self, cmd: str, *extra: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.args(cmd, *extra),
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def json(self, cmd: str, *extra: str, timeout: float = 900) -> dict[str, Any]:
        res = self.run(cmd, *extra, "-o", "json", timeout=timeout)
        assert res.returncode == 0, f"bronze lab {cmd}: {res.stderr[-4000:]}"
        return dict(json.loads(res.stdout))


def _files(root: str) -> set[str]:
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        out.update(os.path.join(dirpath, n) for n in dirnames + filenames)
    return out


def lab_processes(markers: tuple[str, ...]) -> set[tuple[int, str]]:
    """Live (non-zombie) processes whose command line names one of ``markers``."""
    found: set[tuple[int, str]] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X") or not cmd:
            continue
        if any(m in cmd for m in markers):
            found.add((int(entry.name), cmd.strip()))
    return found


def host_snapshot(lab: LabCli) -> dict[str, Any]:
    def sh(*args: str) -> str:
        return subprocess.run(list(args), capture_output=True, text=True, check=True).stdout

    files: set[str] = set()
    for root in (*LIBVIRT_DIRS, str(lab.state_dir), "/run/netns"):
        files |= _files(root)
    links = sorted(
        line.split(":")[1].strip().split("@")[0] for line in sh("ip", "-o", "link").splitlines()
    )
    # only what names this lab: other engineers' tests add and remove their own namespaces,
    # routes and QEMUs on this machine meanwhile
    markers = (
        str(lab.state_dir),
        "libvirtd",
        "virtlogd",
        f"guest={lab.name}-",
        "/var/cache/bronze-lab/venv",
        "server.lab.ra",
    )
    prefix = lab.subnet.rsplit(".", 1)[0]
    return {
        "links": links,
        "routes": sorted(
            r for r in sh("ip", "route", "show", "table", "all").splitlines() if prefix in r
        ),
        "netns": sorted(n for n in sh("ip", "netns", "list").splitlines() if lab.name in n),
        "files": sorted(files),
        "processes": sorted(cmd for _pid, cmd in lab_processes(markers)),
    }
