"""Boot benchmark: N QEMU VMs powered on at once, time until every one has loaded its iPXE script.

    sudo .venv/bin/python -m bench.boot                  # 20 VMs, 2 rounds per side (~1 minute)
    sudo .venv/bin/python -m bench.boot --vms 4 --rounds 1
    sudo .venv/bin/python -m bench.boot --firmware uefi  # OVMF: TFTP in the path (~4 minutes)

Lab (`tests/peers/netlab.Lab`): a host blackhole route for 10.99.251.0/24 first, then one network
namespace with a bridge at 10.99.251.1 and one tap per VM; every process runs inside it and is
killed by PID; everything is removed on exit, Ctrl-C and SIGTERM included. An empty IPv6 router
advertisement every 0.5 s is part of the lab network (without one iPXE waits ~13 s for IPv6
autoconfiguration), for both sides.

VMs: `qemu-system-x86_64 -accel tcg -machine q35 -m 64 -nographic`, no disk, virtio-net with
QEMU's default option ROM (Debian's iPXE `efi-virtio.rom`, BIOS boot), serial to a file. With
`--firmware uefi`: OVMF (`-m 128`) and no option ROM, so the firmware's own PXE fetches
`snponly.efi` over TFTP (windowsize 4 from bronze; dnsmasq has no windowsize), which then
fetches the script.

The two sides run alternately, on the same taps and the same VMs:

* **bronze**: `bronze serve` (SQLite) with `BRONZE_PXE_ENABLED`: `full` DHCP + TFTP on the bridge
  (`pxe.PxeService`) and `GET /boot.ipxe` rendering each registered machine's boot profile. A VM
  has loaded its script when its MAC's netboot timeline has a `SCRIPT` event (read back through
  `GET /api/v1/boot/timeline`; its own timestamp is used, not the time it was read).
* **peer**: dnsmasq (DHCP + TFTP of `undionly.kpxe` for non-iPXE clients; iPXE, by user class,
  gets the HTTP URL and 175.176 `no-pxedhcp` = 1, as bronze sends) + nginx serving the same
  script as a static file. Loaded = a 200 for `/boot.ipxe` from that client address in nginx's
  access log (`$msec`).

With the BIOS ROM (already iPXE) neither side's TFTP is used (Debian ships no non-iPXE BIOS
ROM); `--firmware uefi` puts it in the path. Time zero is just before the N QEMU processes are
started; the table gives first / median / last script load, the CPU busy share of the 2 vCPUs
from time zero until the last load, and bronze / peer of the medians over rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pxe.backend import BootDecision, StaticBackend
from pxe.dhcp.decide import Mode
from pxe.ipxe import BootAction, BootProfile, RenderContext, render
from pxe.service import PxeService, PxeSettings
from server.api.auth import TOKEN_PREFIX
from tests.peers.netlab import (
    BootHttp,
    Lab,
    LoopThread,
    RouterAdvertiser,
    require_tools,
    setns,
)

ROOT = Path(__file__).resolve().parent.parent

T = TypeVar("T")
SUBNET_INDEX = 251
PORT = 8080
KERNEL = "${server}/k/vmlinuz"  # not stored by either side: the VMs stop at the kernel fetch
INITRD = "${server}/k/initrd.img"
ARGS = ("console=ttyS0", "quiet")
WARM_MAC = "52:54:00:be:01:00"  # registered, never booted: the warm-up request's machine


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Runs `fn` on a thread inside namespace `ns` (its sockets live there); returns its result."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            setns(ns)
            box["v"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["e"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["v"]  # type: ignore[no-any-return]


def proc_cpu(pids: list[int], task: str = "stat") -> float:
    """CPU seconds (user + system) used so far by these processes and their reaped children
    (`task="task/TID/stat"`: one thread only)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            f = Path(f"/proc/{pid}/{task}").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in f[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def warm(client: Any, mac: str) -> None:
    """One script request before time zero, for a machine outside the VMs: a running server has
    served scripts before (a fresh `bronze serve` compiles its queries on first use)."""
    r = client.get("/boot.ipxe", params={"mac": mac, "arch": "bios"})
    r.raise_for_status()


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


class Bronze:
    """`bronze serve` in the lab namespace with the boot plane on the bridge."""

    name = "bronze"

    def __init__(self, lab: Lab, tmp: Path, macs: list[str]) -> None:
        self.lab, self.macs, self.tmp = lab, macs, tmp
        self.base = f"http://{lab.server_ip}:{PORT}"
        self.token = TOKEN_PREFIX + secrets.token_urlsafe(24)
        self.env = {
            **os.environ,
            "BRONZE_DATA_DIR": str(tmp / "bronze-data"),
            "BRONZE_API_HOST": lab.server_ip,
            "BRONZE_API_PORT": str(PORT),
            "BRONZE_ADMIN_TOKEN": self.token,
            "BRONZE_LOG_LEVEL": "warning",
            "BRONZE_AGENT_API_ENABLED": "false",
            "BRONZE_POWER_SYNC_ENABLED": "false",
            "BRONZE_PXE_ENABLED": "true",
            "BRONZE_PXE_MODE": "full",
            "BRONZE_PXE_INTERFACE": lab.bridge,
            "BRONZE_PXE_ADDRESS": lab.server_ip,
            "BRONZE_PXE_HTTP_BASE_URL": self.base,
            "BRONZE_PXE_POOL_START": f"{lab.prefix}.100",
            "BRONZE_PXE_POOL_END": f"{lab.prefix}.200",
            "BRONZE_PXE_TFTP_ROOT": "/usr/lib/ipxe",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.registered = False
        self.id0 = 0
        self.steps: dict[str, list[tuple[str, float]]] = {}  # MAC -> (kind, seconds) last read

    def _client(self) -> Any:
        import httpx

        return httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        )

    def start(self) -> None:
        log = open(self.tmp / "bronze.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = self.lab.spawn(
            str(ROOT / ".venv/bin/bronze"), "serve", env=self.env, stdout=log, stderr=log
        )

        def ready() -> None:
            deadline = time.monotonic() + 60
            with self._client() as c:
                while True:
                    try:
                        if c.get("/healthz").status_code == 200:
                            break
                    except Exception:  # noqa: BLE001, S110 - not listening yet
                        pass
                    if time.monotonic() > deadline or (self.proc and self.proc.poll() is not None):
                        tail = (self.tmp / "bronze.log").read_text()[-2000:]
                        raise RuntimeError(f"bronze serve did not come up:\n{tail}")
                    time.sleep(0.2)
                if not self.registered:
                    r = c.post(
                        "/api/v1/profiles",
                        json={
                            "name": "bench",
                            "kernel": KERNEL,
                            "initrds": [INITRD],
                            "args": list(ARGS),
                        },
                    )
                    r.raise_for_status()
                    for i, mac in enumerate([WARM_MAC, *self.macs]):
                        r = c.post(
                            "/api/v1/machines", json={"name": f"vm{i}", "nics": [{"mac": mac}]}
                        )
                        r.raise_for_status()
                warm(c, WARM_MAC)
            self.registered = True

        in_netns(self.lab.ns, ready)

    def _db(self, sql: str, *args: object) -> int:
        db = Path(self.env["BRONZE_DATA_DIR"]) / "bronze.db"
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return int(con.execute(sql, args).fetchone()[0] or 0)

    def cpu(self) -> float:
        return proc_cpu([self.proc.pid] if self.proc else [])

    def mark(self) -> None:
        self.id0 = self._db("SELECT MAX(id) FROM boot_timeline")

    def count(self) -> int:
        """VMs with a SCRIPT event since `mark()`: a read-only query on bronze's SQLite file, so
        waiting costs the server nothing (polling its API 20 times a second would)."""
        return self._db(
            "SELECT COUNT(DISTINCT mac) FROM boot_timeline WHERE kind = 'SCRIPT' AND id > ?",
            self.id0,
        )

    def loaded(self, since: float) -> dict[str, float]:
        """MAC -> epoch time of its first SCRIPT event after `since`, through the REST API."""

        def read() -> dict[str, float]:
            out: dict[str, float] = {}
            with self._client() as c:
                for mac in self.macs:
                    r = c.get("/api/v1/boot/timeline", params={"mac": mac, "limit": 1000})
                    r.raise_for_status()
                    self.steps[mac] = [
                        (e["kind"], _epoch(e["at"]) - since)
                        for e in r.json()["items"]
                        if _epoch(e["at"]) >= since
                    ]
                    ats = [
                        _epoch(e["at"])
                        for e in r.json()["items"]
                        if e["kind"] == "SCRIPT" and _epoch(e["at"]) >= since
                    ]
                    if ats:
                        out[mac] = min(ats)
            return out

        return in_netns(self.lab.ns, read)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
            self.lab.kill(self.proc)
        self.proc = None


def _epoch(v: float | str) -> float:
    if isinstance(v, int | float):
        return float(v)
    from datetime import datetime

    return datetime.fromisoformat(v).timestamp()


class Peer:
    """dnsmasq (DHCP + TFTP) and nginx (the script as a static file) in the lab namespace."""

    name = "dnsmasq+nginx"

    def __init__(self, lab: Lab, tmp: Path, macs: list[str], script: bytes) -> None:
        self.lab, self.macs = lab, macs
        self.dir = tmp / "peer"
        www = self.dir / "www"
        www.mkdir(parents=True)
        (www / "boot.ipxe").write_bytes(script)
        for p in (tmp, self.dir, www):
            os.chmod(p, 0o755)  # noqa: S103 - nginx workers (nobody) read the static file
        self.access = self.dir / "access.log"
        url = f"http://{lab.server_ip}:{PORT}/boot.ipxe"
        (self.dir / "dnsmasq.conf").write_text(
            "\n".join(
                [
                    "port=0",
                    "no-resolv",
                    "no-hosts",
                    "bind-interfaces",
                    f"interface={lab.bridge}",
                    "no-ping",
                    "dhcp-authoritative",
                    f"dhcp-range={lab.prefix}.100,{lab.prefix}.200,255.255.255.0,1h",
                    f"dhcp-leasefile={self.dir / 'dnsmasq.leases'}",
                    f"pid-file={self.dir / 'dnsmasq.pid'}",
                    # the usual iPXE chainload: firmware PXE -> TFTP undionly.kpxe (BIOS) or
                    # snponly.efi (x86-64 UEFI), as bronze picks by architecture; iPXE -> HTTP
                    "dhcp-userclass=set:ipxe,iPXE",
                    "dhcp-match=set:ipxe,175",
                    "dhcp-match=set:efi64,option:client-arch,7",
                    "dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe",
                    "dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi",
                    f"dhcp-boot=tag:ipxe,{url}",
                    "dhcp-option=tag:ipxe,encap:175,176,1",  # no-pxedhcp, as bronze sends
                    "enable-tftp",
                    "tftp-root=/usr/lib/ipxe",
                    "",
                ]
            )
        )
        (self.dir / "nginx.conf").write_text(
            f"""worker_processes 1;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/nginx-error.log;
events {{ worker_connections 256; }}
http {{
  log_format bench '$msec $remote_addr $status $request_uri';
  access_log {self.access} bench;
  server {{
    listen {lab.server_ip}:{PORT};
    root {www};
    default_type text/plain;
  }}
}}
"""
        )
        self.procs: list[subprocess.Popen[bytes]] = []
        self.since = 0.0

    def start(self) -> None:
        log = open(self.dir / "dnsmasq.log", "ab")  # noqa: SIM115
        self.procs = [
            self.lab.spawn(
                "dnsmasq",
                "--keep-in-foreground",
                f"--conf-file={self.dir / 'dnsmasq.conf'}",
                "--log-facility=-",
                stdout=log,
                stderr=log,
            ),
            self.lab.spawn("nginx", "-c", str(self.dir / "nginx.conf"), "-p", str(self.dir)),
        ]
        deadline = time.monotonic() + 10
        while not ((self.dir / "dnsmasq.pid").exists() and (self.dir / "nginx.pid").exists()):
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args!r} exited; see {self.dir}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"dnsmasq/nginx did not start; see {self.dir}")
            time.sleep(0.1)

    def cpu(self) -> float:
        pids = [p.pid for p in self.procs]
        with contextlib.suppress(OSError, ValueError):  # nginx's worker
            kids = Path(f"/proc/{self.procs[1].pid}/task/{self.procs[1].pid}/children")
            pids += [int(x) for x in kids.read_text().split()]
        return proc_cpu(pids)

    def mark(self) -> None:
        self.since = time.time()  # the access log is appended to over rounds

    def count(self) -> int:
        return len(self.loaded(self.since))

    def loaded(self, since: float) -> dict[str, float]:
        """Client address -> epoch time of its first 200 for /boot.ipxe after `since`."""
        out: dict[str, float] = {}
        if not self.access.exists():
            return out
        for line in self.access.read_text().splitlines():
            m = re.match(r"([\d.]+) (\S+) (\d+) /boot\.ipxe", line)
            if m and m.group(3) == "200" and float(m.group(1)) >= since:
                out.setdefault(m.group(2), float(m.group(1)))
        return out

    def stop(self) -> None:
        for p in self.procs:
            self.lab.kill(p)
        self.procs = []
        for f in ("dnsmasq.pid", "nginx.pid"):
            (self.dir / f).unlink(missing_ok=True)


class PxeOnly:
    """`--pxe-only`: the boot plane library without the server, to tell their costs apart:
    `pxe.PxeService` (full mode, a `StaticBackend` that lets every MAC boot) on a uvloop thread
    inside the namespace, plus `tests.peers.netlab.BootHttp` answering `/boot.ipxe` with
    `pxe.ipxe.render` of the same profile. Loaded = the time that HTTP server rendered the MAC's
    script."""

    name = "pxe only"

    def __init__(self, lab: Lab, tmp: Path, macs: list[str], profile: BootProfile) -> None:
        self.lab, self.tmp, self.macs, self.profile = lab, tmp, set(macs), profile
        self.base = f"http://{lab.server_ip}:{PORT}"
        self.at: dict[str, float] = {}
        self.since = 0.0
        self.loop: LoopThread | None = None
        self.service: PxeService | None = None
        self.http: BootHttp | None = None

    def _script(self, query: dict[str, str]) -> bytes:
        mac = query.get("mac", "")
        text = render(BootAction.PROFILE, RenderContext(mac=mac, server=self.base), self.profile)
        self.at.setdefault(mac, time.time())
        return text.encode()

    def start(self) -> None:
        try:
            import uvloop  # as under `bronze serve`

            self.loop = LoopThread(netns=self.lab.ns, loop_factory=uvloop.new_event_loop)
        except ImportError:
            self.loop = LoopThread(netns=self.lab.ns)
        settings = PxeSettings(
            enabled=True,
            mode=Mode.FULL,
            interface=self.lab.bridge,
            address=self.lab.server_ip,
            http_base_url=self.base,
            tftp_root=Path("/usr/lib/ipxe"),
            state_dir=self.tmp / "pxe-only",
            pool_start=f"{self.lab.prefix}.100",
            pool_end=f"{self.lab.prefix}.200",
        )
        allow = StaticBackend(default=BootDecision(known=True, allow_boot=True))
        self.service = PxeService(settings, allow)
        self.http = BootHttp(self.lab.server_ip, PORT, {"/boot.ipxe": self._script})
        self.loop.run(self.service.start())
        self.loop.run(self.http.start())

        def ready() -> None:
            import httpx

            with httpx.Client(base_url=self.base, timeout=10) as c:
                warm(c, WARM_MAC)

        in_netns(self.lab.ns, ready)

    def cpu(self) -> float:
        tid = self.loop.thread.native_id if self.loop else None
        return proc_cpu([os.getpid()], f"task/{tid}/stat") if tid else 0.0

    def mark(self) -> None:
        self.since = time.time()
        self.at.clear()

    def count(self) -> int:
        return len(self.loaded(self.since))

    def loaded(self, since: float) -> dict[str, float]:
        return {m: t for m, t in list(self.at.items()) if m in self.macs and t >= since}

    def stop(self) -> None:
        if self.loop is not None:
            if self.http is not None:
                self.loop.run(self.http.stop())
            if self.service is not None:
                self.loop.run(self.service.stop())
            self.loop.close()
        self.loop = self.service = self.http = None


Side = Bronze | Peer | PxeOnly


class Wire:
    """`--steps`: watches the bridge (an AF_PACKET socket on a thread inside the namespace) and
    times each step per VM on the wire, the same way for both sides: DISCOVER -> OFFER and
    REQUEST -> ACK (the DHCP server), ACK -> GET /boot.ipxe (the VM: iPXE, ARP, TCP), GET ->
    first response packet (the HTTP server). Parsing every frame in Python costs CPU, so it is
    off by default."""

    STEPS = (("DISCOVER", "OFFER"), ("REQUEST", "ACK"), ("ACK", "GET"), ("GET", "RESPONSE"))
    DHCP = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 5: "ACK"}

    def __init__(self, ns: str, bridge: str) -> None:
        self.first: dict[tuple[str, str], float] = {}  # (step, MAC or client IP) -> time
        self.ip_mac: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ns, bridge), daemon=True)
        self._thread.start()

    def _run(self, ns: str, bridge: str) -> None:
        setns(ns)
        # ETH_P_ALL: only "all protocols" sockets also see the frames this host sends
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as sock:
            sock.bind((bridge, 0))
            sock.settimeout(0.2)
            while not self._stop.is_set():
                try:
                    frame = sock.recv(65535)
                except TimeoutError:
                    continue
                self._frame(time.time(), frame)

    def _frame(self, now: float, d: bytes) -> None:
        if len(d) < 42 or d[12:14] != b"\x08\x00":
            return
        u = 14 + (d[14] & 15) * 4
        sport, dport = struct.unpack_from("!HH", d, u)
        if d[23] == 17 and 67 in (sport, dport) and len(d) > u + 8 + 240:
            p = d[u + 8 :]
            i, mtype = 240, 0
            while i + 1 < len(p) and p[i] != 255:  # options: find 53 (message type)
                if p[i] == 0:
                    i += 1
                    continue
                if p[i] == 53:
                    mtype = p[i + 2]
                i += 2 + p[i + 1]
            mac = p[28:34].hex(":")
            if mtype == 5:
                self.ip_mac[socket.inet_ntoa(p[16:20])] = mac
            if mtype in self.DHCP:
                self.first.setdefault((self.DHCP[mtype], mac), now)
        elif d[23] == 6:
            payload = d[u + (d[u + 12] >> 4) * 4 :]
            if dport == PORT and payload.startswith(b"GET /boot.ipxe"):
                self.first.setdefault(("GET", socket.inet_ntoa(d[26:30])), now)
            elif sport == PORT and payload.startswith(b"HTTP/1."):
                self.first.setdefault(("RESPONSE", socket.inet_ntoa(d[30:34])), now)

    def stop(self) -> dict[str, float]:
        """Median milliseconds per step over the VMs that made both ends of it."""
        self._stop.set()
        self._thread.join()
        at = {(k, self.ip_mac.get(who, who)): t for (k, who), t in self.first.items()}
        macs = {m for _, m in at}
        out: dict[str, float] = {}
        for a, b in self.STEPS:
            gaps = [at[(b, m)] - at[(a, m)] for m in macs if (a, m) in at and (b, m) in at]
            out[f"{a}->{b}"] = 1000 * statistics.median(gaps) if gaps else float("nan")
        return out


def run_once(
    lab: Lab,
    side: Side,
    taps: list[str],
    macs: list[str],
    tmp: Path,
    memory: int,
    uefi: bool,
    timeout: float,
    steps: bool,
) -> dict[str, float]:
    side.start()
    vms: list[subprocess.Popen[bytes]] = []
    wire: Wire | None = None
    try:
        time.sleep(1.0)  # let the servers settle; not measured
        side.mark()
        busy0, total0 = cpu_times()
        srv0 = side.cpu()
        wire = Wire(lab.ns, lab.bridge) if steps else None
        t0 = time.time()
        for i, (tap, mac) in enumerate(zip(taps, macs, strict=True)):
            log = tmp / f"serial-{side.name}-{i}.log"
            vms.append(lab.qemu(tap, mac, log=log, memory_mb=memory, uefi=uefi, workdir=tmp))
        n = len(macs)
        while time.time() - t0 < timeout and side.count() < n:
            time.sleep(0.5)
        busy1, total1 = cpu_times()
        srv1 = side.cpu()
        got = side.loaded(t0)
        times = sorted(v - t0 for v in got.values())
        last = times[-1] if len(times) == n else float("nan")
        # CPU share until the last load (the poll loop may notice it up to ~0.5 s later)
        gaps = wire.stop() if wire else {}
        wire = None
        return {
            **gaps,
            "loaded": len(times),
            "first": times[0] if times else float("nan"),
            "median": statistics.median(times) if times else float("nan"),
            "last": last,
            "cpu": 100.0 * (busy1 - busy0) / max(1, total1 - total0),
            "load1": os.getloadavg()[0],
            "server_cpu": srv1 - srv0,
        }
    finally:
        if wire is not None:
            wire.stop()
        for vm in vms:
            lab.kill(vm)
        side.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2, help="runs per side, alternating")
    ap.add_argument("--memory", type=int, help="MiB per VM (default 64 BIOS, 128 UEFI)")
    ap.add_argument(
        "--firmware",
        choices=["bios", "uefi"],
        default="bios",
        help="bios: QEMU's iPXE ROM (DHCP -> HTTP); uefi: OVMF's own PXE -> TFTP snponly.efi -> "
        "iPXE -> HTTP (exercises TFTP)",
    )
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per run")
    ap.add_argument("--steps", action="store_true", help="time each step on the wire (Wire)")
    ap.add_argument(
        "--pxe-only", action="store_true", help="a third side: pxe.PxeService without the server"
    )
    args = ap.parse_args()
    require_tools("ip", "qemu-system-x86_64", "dnsmasq", "nginx")
    # Ctrl-C and SIGTERM unwind, so the `with Lab` below removes everything (SIGINT explicitly:
    # a shell starts background jobs with it ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    macs = [f"52:54:00:be:00:{i + 1:02x}" for i in range(args.vms)]
    uefi = args.firmware == "uefi"
    memory = args.memory or (128 if uefi else 64)
    firmware = "OVMF PXE -> TFTP -> iPXE" if uefi else "iPXE BIOS ROM"
    tmp = Path(tempfile.mkdtemp(prefix="bench-boot-"))
    results: dict[str, list[dict[str, float]]] = {"bronze": [], "dnsmasq+nginx": []}
    if args.pxe_only:
        results["pxe only"] = []
    try:
        with Lab(tag="boot", subnet_index=SUBNET_INDEX) as lab:
            taps = [lab.add_tap() for _ in macs]
            ra_loop = LoopThread(netns=lab.ns)
            ra = RouterAdvertiser(lab.bridge)
            ra_loop.run(ra.start())
            try:
                base = f"http://{lab.server_ip}:{PORT}"
                profile = BootProfile(name="bench", kernel=KERNEL, initrds=(INITRD,), args=ARGS)
                script = render(
                    BootAction.PROFILE, RenderContext(mac=macs[0], server=base), profile
                ).encode()
                sides: list[Side] = [Bronze(lab, tmp, macs), Peer(lab, tmp, macs, script)]
                if args.pxe_only:
                    sides.append(PxeOnly(lab, tmp, macs, profile))
                for r in range(args.rounds):
                    order = sides if r % 2 == 0 else sides[::-1]
                    for side in order:
                        res = run_once(
                            lab, side, taps, macs, tmp, memory, uefi, args.timeout, args.steps
                        )
                        results[side.name].append(res)
                        print(
                            f"  round {r + 1} {side.name:14s} loaded {res['loaded']:.0f}/"
                            f"{args.vms}  first {res['first']:.1f} s  median "
                            f"{res['median']:.1f} s  last {res['last']:.1f} s  CPU "
                            f"{res['cpu']:.0f}%  load {res['load1']:.1f}  server CPU "
                            f"{res['server_cpu']:.2f} s",
                            flush=True,
                        )
            finally:
                ra_loop.run(ra.stop())
                ra_loop.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"\n{args.vms} VMs (TCG, {memory} MiB, {firmware}) powered on at once, "
        f"median of {args.rounds} rounds"
    )
    print(f"{'side':14s}  {'first s':>8s}  {'median s':>8s}  {'all s':>8s}  {'CPU busy':>8s}")
    med: dict[str, float] = {}
    for name, runs in results.items():

        def m(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        med[name] = m("last")
        print(
            f"{name:14s}  {m('first'):8.1f}  {m('median'):8.1f}  {m('last'):8.1f}  {m('cpu'):7.0f}%"
        )
    ratio = med["bronze"] / med["dnsmasq+nginx"]
    print(f"bronze / peer (all loaded): {ratio:.2f}x  (target <= 1.1x)")
    if args.steps:
        print("\nper step on the wire, median over VMs, median over rounds (ms)")
        print(f"{'side':14s}" + "".join(f"  {a + '->' + b:>17s}" for a, b in Wire.STEPS))
        for name, runs in results.items():
            cells = [statistics.median(r[f"{a}->{b}"] for r in runs) for a, b in Wire.STEPS]
            print(f"{name:14s}" + "".join(f"  {c:17.0f}" for c in cells))


if __name__ == "__main__":
    main()
