"""The lab's own records and the teardown that reads them.

``up`` appends a record to ``STATE/state.json`` *before* it creates each thing (a route, the
namespace, a process, a libvirt domain, a file outside the state dir), so a ``down`` after a
crashed or killed ``up`` finds everything that may exist. Teardown walks the records backwards
and each removal is idempotent: a thing already gone is not an error. Processes are killed by
PID, and only when ``/proc/PID/stat``'s start time still matches the record (a reused PID is
left alone); never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.lab import config as cfg

STATE_FILE = "state.json"
LIBVIRT_ETC = Path("/etc/libvirt/qemu")
LIBVIRT_RUN = Path("/run/libvirt/qemu")
LIBVIRT_LIB = Path("/var/lib/libvirt/qemu")
LIBVIRT_LOG = Path("/var/log/libvirt/qemu")
LIBVIRT_DIRS = ("/etc/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/log/libvirt")
"""Where libvirtd and virtlogd create files of their own (a first start on a host makes
``/run/libvirt/common``, ``/etc/libvirt/secrets``, ...): ``down`` removes what was not there."""


def existing_paths(roots: tuple[str, ...] = LIBVIRT_DIRS) -> list[str]:
    """Every path under ``roots`` now (the roots included), to compare with at teardown."""
    out: list[str] = []
    for root in roots:
        if not os.path.lexists(root):
            continue
        out.append(root)
        for parent, dirs, files in os.walk(root):
            out.extend(os.path.join(parent, n) for n in (*dirs, *files))
    return sorted(out)


def remove_new_paths(roots: list[str], existing: list[str]) -> None:
    """Remove what appeared under ``roots`` since :func:`existing_paths` listed ``existing``."""
    keep = set(existing)
    for root in roots:
        if not os.path.lexists(root):
            continue
        if root not in keep:
            shutil.rmtree(root, ignore_errors=True)
            continue
        for parent, dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(parent, name)
                if path not in keep:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            for name in list(dirs):
                path = os.path.join(parent, name)
                if path not in keep:
                    dirs.remove(name)  # not walked into: removed whole
                    if os.path.islink(path):
                        os.unlink(path)
                    else:
                        shutil.rmtree(path, ignore_errors=True)


def run(*args: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(  # noqa: S603
        list(args), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot), or None when the PID is gone or a
    zombie (a lab process outlives ``up`` and is reaped by init, if ever)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


class Records:
    """``state.json``: the plan and the list of things created, flushed after every change."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / STATE_FILE
        self.data: dict[str, Any] = {"resources": [], "status": "starting"}
        if self.path.exists():
            self.data = json.loads(self.path.read_text())

    def exists(self) -> bool:
        return self.path.exists()

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)

    def add(self, kind: str, **fields: Any) -> dict[str, Any]:
        rec = {"kind": kind, **fields}
        self.data["resources"].append(rec)
        self.save()
        return rec

    def update(self, rec: dict[str, Any], **fields: Any) -> None:
        rec.update(fields)
        self.save()

    @property
    def resources(self) -> list[dict[str, Any]]:
        return list(self.data["resources"])


def _pid_of(rec: dict[str, Any]) -> None:
    """Fills a record's pid/start from the file its child wrote, when ``up`` died before it
    could record them."""
    if rec.get("pid") is None and rec.get("pid_file"):
        with contextlib.suppress(OSError, ValueError):
            pid, start = Path(rec["pid_file"]).read_text().split()
            rec["pid"], rec["start"] = int(pid), int(start)


def alive(rec: dict[str, Any]) -> bool:
    _pid_of(rec)
    pid = rec.get("pid")
    return pid is not None and start_time(int(pid)) == rec.get("start")


def kill_proc(rec: dict[str, Any], grace: float = 10.0) -> None:
    """SIGTERM the process group the record names (each lab process leads its own session),
    then SIGKILL what is left; a PID whose start time changed is someone else's."""
    if not alive(rec):
        return
    pid = int(rec["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and alive(rec):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def remove_domain(name: str, libvirtd_alive: bool) -> None:
    """Destroy and undefine; when libvirtd is gone, kill its QEMU by pid file and remove the
    files libvirt keeps for the domain."""
    if libvirtd_alive:
        run("virsh", "-c", "qemu:///system", "destroy", name, timeout=30)
        run("virsh", "-c", "qemu:///system", "undefine", name, "--nvram", timeout=30)
    pid_file = LIBVIRT_RUN / f"{name}.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text().strip())
        if f"guest={name}" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            os.kill(pid, signal.SIGKILL)
    for path in (
        LIBVIRT_ETC / f"{name}.xml",
        LIBVIRT_LOG / f"{name}.log",
        LIBVIRT_RUN / f"{name}.pid",
        LIBVIRT_RUN / f"{name}.xml",
        # a Redfish boot override in UEFI mode makes sushy's libvirt driver add an OVMF loader
        # with its NVRAM here (not in the lab's dir)
        LIBVIRT_LIB / "nvram" / f"{name}_VARS.fd",
    ):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    for parent in (LIBVIRT_LIB, LIBVIRT_RUN, LIBVIRT_LIB / "channel" / "target"):
        if parent.is_dir():
            for child in parent.glob(f"domain-*-{name}"):
                shutil.rmtree(child, ignore_errors=True)


def teardown(records: Records, log: Callable[[str], None] = lambda _m: None) -> list[str]:
    """Remove everything ``records`` names, last created first. Returns the problems left."""
    problems: list[str] = []
    res = records.resources
    libvirtd = next((r for r in res if r["kind"] == "proc" and r["role"] == "libvirtd"), None)
    for rec in reversed(res):
        kind = rec["kind"]
        try:
            if kind == "proc":
                log(f"stopping {rec['role']} (pid {rec.get('pid')})")
                kill_proc(rec)
                if alive(rec):
                    problems.append(f"{rec['role']} pid {rec['pid']} still running")
            elif kind == "domain":
                log(f"removing VM {rec['name']}")
                remove_domain(rec["name"], libvirtd is not None and alive(libvirtd))
            elif kind == "file":
                path = Path(rec["path"])
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
            elif kind == "libvirt-paths":
                log("removing what libvirtd created under " + ", ".join(rec["roots"]))
                remove_new_paths(rec["roots"], rec["existing"])
            elif kind == "netns":
                log(f"deleting namespace {rec['name']}")
                if Path(f"/run/netns/{rec['name']}").exists():
                    run("ip", "netns", "del", rec["name"], check=True)
            elif kind == "route":
                log(f"deleting blackhole route {rec['subnet']}")
                shown = run("ip", "route", "show", "type", "blackhole", rec["subnet"]).stdout
                if shown.strip():
                    run("ip", "route", "del", "blackhole", rec["subnet"], check=True)
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            problems.append(f"{kind} {rec}: {exc}")
    if not problems:
        shutil.rmtree(records.dir, ignore_errors=True)
    return problems


def status(state_dir: Path) -> dict[str, Any]:
    records = Records(state_dir)
    if not records.exists():
        return {"status": "down", "state_dir": str(state_dir)}
    plan = cfg.Plan.from_json(records.data["plan"])
    procs = [
        {"role": r["role"], "pid": r.get("pid"), "running": alive(r)}
        for r in records.resources
        if r["kind"] == "proc"
    ]
    vms = []
    for vm in plan.vms:
        state = run("virsh", "-c", "qemu:///system", "domstate", vm.name)
        vms.append(
            {
                "name": vm.name,
                "mac": vm.mac,
                "uuid": vm.uuid,
                "state": state.stdout.strip() if state.returncode == 0 else "unknown",
                "firmware": vm.firmware,
                "redfish": f"127.0.0.1:{vm.redfish_port}",
                "ipmi": f"127.0.0.1:{vm.ipmi_port}" if vm.ipmi_port else None,
                "console": vm.console,
            }
        )
    return {
        "status": records.data.get("status", "starting"),
        "name": plan.name,
        "netns": plan.netns,
        "subnet": plan.subnet,
        "firmware": plan.firmware,
        "api_url": plan.api_url,
        "token_file": str(state_dir / "bronze" / "admin.token"),
        "bmc_password_file": str(state_dir / "bmc.password"),
        "state_dir": str(state_dir),
        "up_seconds": records.data.get("up_seconds"),
        "image": records.data.get("image"),
        "processes": procs,
        "machines": vms,
    }
