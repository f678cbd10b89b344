"""Read-only diagnostics the server may ask for over the session (there is no shell).

Each op reads the ``--root`` tree and returns bytes, sent back in chunks:

* ``dmesg``    — ``/var/log/dmesg`` (a boot image copies the ring buffer there);
* ``logs``     — ``/var/log/bronze/<service>.log``, or ``/var/log/syslog`` without a service;
  the last ``tail_lines`` lines when asked;
* ``stats``    — JSON: uptime, load averages, memory from ``/proc``;
* ``ps``       — ``PID RSS COMMAND`` for each ``/proc/<pid>``;
* ``services`` — ``/run/bronze/services.json`` (the service supervisor's state file).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from agent.gen import agent_pb2 as pb

CHUNK = 16 * 1024
_SERVICE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class NodeOpError(Exception):
    pass


def _read(root: Path, rel: str) -> bytes:
    try:
        return (root / rel).read_bytes()
    except OSError as exc:
        raise NodeOpError(f"/{rel}: {exc.strerror or exc}") from None


def _tail(data: bytes, lines: int) -> bytes:
    if lines <= 0:
        return data
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


def stats(root: Path) -> bytes:
    def num(rel: str, idx: int) -> float:
        try:
            return float((root / rel).read_text().split()[idx])
        except (OSError, ValueError, IndexError):
            return -1.0

    mem: dict[str, int] = {}
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            k, _, v = line.partition(":")
            mem[k] = int(v.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    doc = {
        "uptime_seconds": num("proc/uptime", 0),
        "load": [num("proc/loadavg", i) for i in range(3)],
        "memory_total_bytes": mem.get("MemTotal", -1),
        "memory_available_bytes": mem.get("MemAvailable", -1),
    }
    return json.dumps(doc, sort_keys=True).encode()


def ps(root: Path) -> bytes:
    rows = ["PID RSS_KIB COMMAND"]
    proc = root / "proc"
    pids = sorted(int(p.name) for p in proc.iterdir() if p.name.isdigit()) if proc.is_dir() else []
    for pid in pids:
        d = proc / str(pid)
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            rss = "0"
            for line in (d / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = line.split()[1]
            rows.append(f"{pid} {rss} {cmd.strip() or (d / 'comm').read_text().strip()}")
        except OSError:
            continue  # the process exited while we looked
    return ("\n".join(rows) + "\n").encode()


def run(root: Path, op: pb.NodeOp) -> bytes:
    if op.kind == pb.NODE_OP_DMESG:
        return _tail(_read(root, "var/log/dmesg"), op.tail_lines)
    if op.kind == pb.NODE_OP_LOGS:
        if op.service:
            if not _SERVICE.match(op.service):
                raise NodeOpError(f"invalid service name {op.service!r}")
            return _tail(_read(root, f"var/log/bronze/{op.service}.log"), op.tail_lines)
        return _tail(_read(root, "var/log/syslog"), op.tail_lines)
    if op.kind == pb.NODE_OP_STATS:
        return stats(root)
    if op.kind == pb.NODE_OP_PS:
        return ps(root)
    if op.kind == pb.NODE_OP_SERVICES:
        return _read(root, "run/bronze/services.json")
    raise NodeOpError(f"unknown node op {op.kind}")


def chunks(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
