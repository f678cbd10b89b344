"""Read-only diagnostics the server may ask for over the session (there is no shell).

Each op reads the ``--root`` tree and returns bytes, sent back in chunks:

* ``dmesg``    — ``/var/log/dmesg`` (a boot image copies the ring buffer there);
* ``logs``     — ``/var/log/bronze/<service>.log``, or ``/var/log/syslog`` without a service;
  the last ``tail_lines`` lines when asked;
* ``stats``    — JSON: uptime, load averages, memory from ``/proc``;
* ``ps``       — ``PID RSS COMMAND`` for each ``/proc/<pid>``;
* ``services`` — ``/run/bronze/services.json`` (the service supervisor's state file).

``logs`` and ``dmesg`` can **follow** (``tail -f``): :func:`follow` yields the current content,
then what is appended, polling the file every :data:`FOLLOW_POLL` seconds (a file that shrinks
was rotated or truncated: it is read again from the start). It runs until the caller stops
iterating (the server sent ``CancelNodeOp`` or the session ended).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

from agent.gen import agent_pb2 as pb

CHUNK = 16 * 1024
FOLLOW_POLL = 0.25
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

    mem: dict[str, int] = {}  # meminfo's values: kB, or counts (HugePages_*)
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            k, _, v = line.partition(":")
            mem[k] = int(v.split()[0])
    except (OSError, ValueError, IndexError):
        pass

    def kib(key: str) -> int:
        return mem[key] * 1024 if key in mem else -1

    doc = {
        "uptime_seconds": num("proc/uptime", 0),
        "load": [num("proc/loadavg", i) for i in range(3)],
        "memory_total_bytes": kib("MemTotal"),
        "memory_available_bytes": kib("MemAvailable"),
        "hugepages_total": mem.get("HugePages_Total", -1),
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


def _log_path(op: pb.NodeOp) -> str:
    """The file a ``logs``/``dmesg`` op reads, relative to the root."""
    if op.kind == pb.NODE_OP_DMESG:
        return "var/log/dmesg"
    if op.service:
        if not _SERVICE.fullmatch(op.service):
            raise NodeOpError(f"invalid service name {op.service!r}")
        return f"var/log/bronze/{op.service}.log"
    return "var/log/syslog"


def run(root: Path, op: pb.NodeOp) -> bytes:
    if op.kind in (pb.NODE_OP_DMESG, pb.NODE_OP_LOGS):
        return _tail(_read(root, _log_path(op)), op.tail_lines)
    if op.kind == pb.NODE_OP_STATS:
        return stats(root)
    if op.kind == pb.NODE_OP_PS:
        return ps(root)
    if op.kind == pb.NODE_OP_SERVICES:
        return _read(root, "run/bronze/services.json")
    raise NodeOpError(f"unknown node op {op.kind}")


def chunks(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]


async def follow(root: Path, op: pb.NodeOp) -> AsyncIterator[bytes]:
    """``tail -f``: the (tailed) content, then every append, until the caller stops."""
    if op.kind not in (pb.NODE_OP_DMESG, pb.NODE_OP_LOGS):
        raise NodeOpError("follow is only possible for logs and dmesg")
    rel = _log_path(op)
    data = await asyncio.to_thread(_read, root, rel)
    pos = len(data)
    for chunk in chunks(_tail(data, op.tail_lines)):
        yield chunk  # at least one, maybe empty: tells the caller the follow has started
    path = root / rel
    while True:
        await asyncio.sleep(FOLLOW_POLL)
        try:
            size = path.stat().st_size
        except OSError:
            continue  # rotated away for a moment
        if size < pos:
            pos = 0  # truncated or replaced: start over
        if size == pos:
            continue
        with path.open("rb") as fh:
            fh.seek(pos)
            new = fh.read(size - pos)
        pos += len(new)
        for chunk in chunks(new):
            yield chunk
