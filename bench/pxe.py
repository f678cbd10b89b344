"""Boot plane benchmark: bronze's DHCP and TFTP beside dnsmasq and tftpd-hpa, in one table.

    sudo .venv/bin/python -m bench.pxe            # everything (~3 minutes)
    sudo .venv/bin/python -m bench.pxe --only tftp

DHCP: a lab namespace (bridge at 10.99.N.1) and a client namespace (10.99.N.2, a veth on the
bridge); perfdhcp runs in the client namespace as a relay (DISCOVER-OFFER-REQUEST-ACK) at
increasing rates; we report the highest rate with < 0.5% drops (late answers are waited for with
-W), then p50/p99 DISCOVER->OFFER latency measured by our own relay-style probe at a fixed rate.
bronze runs `full` mode (it hands out addresses, as dnsmasq does). perfdhcp's 200 MACs (-M) and
the probe's 32 are registered with bronze's backend, as a fleet's MACs are under `bronze serve`.

TFTP: 127.0.0.1 only. Server and client pinned to CPU 0 (`taskset -c 0`) for the single-stream
rows (a lock-step round trip across two vCPUs costs ~85 us, on one ~8 us). The windowsize row
uses a small C client (compiled here with cc) that asks for windowsize 16; tftpd-hpa has no
windowsize, so it is compared with its lock-step run at the same block size. The last row runs
50 curl clients at once (8 MiB each, unpinned).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from pxe.backend import BootDecision, StaticBackend, null_sink
from pxe.dhcp.decide import BootConfig, Mode
from pxe.dhcp.leases import LeaseStore
from pxe.dhcp.packet import Op, Opt, Packet, encode, mac_bytes, parse
from pxe.dhcp.server import DhcpServer
from tests.peers.netlab import Lab, setns
from tests.support.ports import free_udp_port as free_port

ROOT = Path(__file__).resolve().parent.parent

PY = sys.executable

# The clients of the DHCP rows: perfdhcp draws each exchange's MAC from PERFDHCP_MACS (-M), the
# latency probe uses PROBE_MACS. All of them are registered (known) to bronze, as a fleet's MACs
# are in `bronze serve` (BootPlane.known_macs): 232 fit the pool of 241 addresses.
PERFDHCP_MACS = [f"02:00:00:00:{i >> 8:02x}:{i & 0xFF:02x}" for i in range(200)]
PROBE_MACS = [f"52:54:01:00:00:{i:02x}" for i in range(32)]


# -- DHCP ------------------------------------------------------------------------------------------
def perfdhcp(ns: str, rate: int, seconds: int, server: str, macs: Path) -> dict[str, float]:
    cmd = [
        "taskset",
        "-c",
        "1",
        "ip",
        "netns",
        "exec",
        ns,
        "perfdhcp",
        "-4",
        "-l",
        "eth0",
        "-r",
        str(rate),
        "-M",
        str(macs),
        "-p",
        str(seconds),
        "-W",
        "1000000",
        server,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    rate_m = re.search(r"Rate: ([\d.]+) 4-way", out)
    sent = [int(x) for x in re.findall(r"sent packets: (\d+)", out)]
    drops = [int(x) for x in re.findall(r"drops: (\d+)", out)]
    avg = [float(x) for x in re.findall(r"avg delay: ([\d.]+) ms", out)]
    return {
        "rate": float(rate_m.group(1)) if rate_m else 0.0,
        "loss": (sum(drops) / max(1, sum(sent))) if sent else 1.0,
        "avg_ms": avg[0] if avg else float("nan"),
    }


def probe_latency(ns: str, client_ip: str, server: str, count: int, rate: float) -> list[float]:
    """DISCOVER->OFFER round trips (ms) from a relay-style client in namespace `ns`."""
    result: list[float] = []

    def run() -> None:
        setns(ns)
        os.sched_setaffinity(0, {1})  # the client's CPU, as perfdhcp's (servers are on CPU 0)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((client_ip, 67))
        s.settimeout(0.5)
        sent: dict[int, float] = {}
        gap = 1.0 / rate
        for i in range(count):
            xid = 0x10000 + i
            mac = mac_bytes(PROBE_MACS[i % len(PROBE_MACS)])
            pkt = Packet(
                op=Op.BOOTREQUEST,
                xid=xid,
                chaddr=mac,
                giaddr=client_ip,
                hops=1,
                options={Opt.MESSAGE_TYPE: b"\x01"},
            )
            sent[xid] = time.perf_counter()
            s.sendto(encode(pkt), (server, 67))
            deadline = time.perf_counter() + gap
            while True:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                s.settimeout(left)
                try:
                    data = s.recv(2048)
                except TimeoutError:
                    break
                now = time.perf_counter()
                try:
                    r = parse(data)
                except Exception:  # noqa: BLE001, S112
                    continue
                if r.xid in sent:
                    result.append((now - sent.pop(r.xid)) * 1000)
        s.close()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return result


def bench_dhcp(seconds: int, rates: list[int]) -> list[tuple[str, str, str, str]]:
    # The servers (bronze's loop thread, dnsmasq) get CPU 0, perfdhcp CPU 1: on 2 vCPUs an
    # unpinned perfdhcp competes with the server it measures.
    os.sched_setaffinity(0, {0})
    rows = []
    with Lab(tag="bench", subnet_index=250) as lab, tempfile.TemporaryDirectory() as tmp:
        cns = lab.add_veth_ns("c", f"{lab.prefix}.2")
        macs = Path(tmp) / "macs"
        macs.write_text("".join(f"{m}\n" for m in PERFDHCP_MACS))
        results: dict[str, tuple[float, float, float, float]] = {}
        for name in ("dnsmasq", "bronze"):
            stop = start_dhcp(name, lab)
            try:
                time.sleep(0.5)
                probe_latency(cns, f"{lab.prefix}.2", lab.server_ip, 200, 500)  # warm up
                lat = probe_latency(cns, f"{lab.prefix}.2", lab.server_ip, 2000, 500)
                best = 0.0
                for rate in rates:
                    r = perfdhcp(cns, rate, seconds, lab.server_ip, macs)
                    print(
                        f"  {name:8s} rate {rate:5d}/s -> {r['rate']:8.1f}/s loss "
                        f"{r['loss'] * 100:5.2f}% avg {r['avg_ms']:.2f} ms",
                        flush=True,
                    )
                    if r["loss"] < 0.005 and r["avg_ms"] < 20:
                        best = max(best, r["rate"])
                    else:
                        break
                lat.sort()
                p50 = statistics.median(lat) if lat else float("nan")
                p99 = lat[int(len(lat) * 0.99) - 1] if lat else float("nan")
                results[name] = (best, p50, p99, len(lat) / 2000)
            finally:
                stop()
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        b, d = results["bronze"], results["dnsmasq"]
        rows.append(
            (
                "DHCP DORA/s, <0.5% loss, avg <20 ms (perfdhcp)",
                f"{b[0]:.0f}",
                f"{d[0]:.0f}",
                f"{b[0] / d[0]:.2f}x" if d[0] else "-",
            )
        )
        rows.append(
            (
                "DHCP DISCOVER->OFFER p50 ms @500/s",
                f"{b[1]:.3f}",
                f"{d[1]:.3f}",
                f"{d[1] / b[1]:.2f}x" if b[1] else "-",
            )
        )
        rows.append(
            (
                "DHCP DISCOVER->OFFER p99 ms @500/s",
                f"{b[2]:.3f}",
                f"{d[2]:.3f}",
                f"{d[2] / b[2]:.2f}x" if b[2] else "-",
            )
        )
    return rows


def start_dhcp(name: str, lab: Lab):  # noqa: ANN201
    if name == "dnsmasq":
        tmp = Path(tempfile.mkdtemp(prefix="bench-dnsmasq-"))
        proc = lab.spawn(
            "dnsmasq",
            "--keep-in-foreground",
            "--log-facility=/dev/null",
            "--conf-file=/dev/null",
            f"--pid-file={tmp / 'pid'}",
            "--no-ping",
            "--port=0",
            "--bind-interfaces",
            f"--interface={lab.bridge}",
            "--dhcp-authoritative",
            f"--dhcp-range={lab.prefix}.10,{lab.prefix}.250,255.255.255.0,1h",
            f"--dhcp-leasefile={tmp / 'leases'}",
        )

        def stop() -> None:
            lab.kill(proc)
            shutil.rmtree(tmp, ignore_errors=True)

        return stop
    # bronze in a process of its own, as under `bronze serve` (and as dnsmasq): in this process
    # its loop thread would share the GIL with the probe thread it is measured by.
    proc = lab.spawn(
        "taskset",
        "-c",
        "0",
        PY,
        "-m",
        "bench.pxe",
        "--serve-dhcp",
        lab.server_ip,
        lab.bridge,
        lab.prefix,
        cwd=ROOT,
    )
    time.sleep(1.5)

    def stop_b() -> None:
        lab.kill(proc)

    return stop_b


def run_loop(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` on uvloop, as `bronze serve` does through uvicorn[standard]; plain asyncio
    where uvloop is missing."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def serve_dhcp(server_ip: str, bridge: str, prefix: str) -> None:
    """`bench.pxe --serve-dhcp`: bronze's `full` mode DHCP on uvloop, until killed."""

    async def main() -> None:
        srv = DhcpServer(
            mode=Mode.FULL,
            boot=BootConfig(server_ip=server_ip, http_base_url=f"http://{server_ip}:8080"),
            # The clients' MACs registered, as a fleet's are: the backend lists them
            # (known_macs), so admission never rate-limits them (pxe.dhcp.admission). A backend
            # that calls every MAC known without a list leaves each MAC's first request to the
            # flood guard (50/s), which would measure that guard, not the answer path.
            backend=StaticBackend(
                dict.fromkeys(PERFDHCP_MACS + PROBE_MACS, BootDecision(known=True, allow_boot=True))
            ),
            sink=null_sink,
            address=server_ip,
            interface=bridge,
            leases=LeaseStore(None, (f"{prefix}.10", f"{prefix}.250")),
        )
        await srv.start()
        await asyncio.Event().wait()

    run_loop(main())


# -- TFTP ------------------------------------------------------------------------------------------
C_CLIENT = r"""
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
/* tftpw HOST PORT FILE BLKSIZE WINDOW: RRQ with blksize/windowsize, discard data, print bytes */
int main(int argc, char **argv) {
  int blk = atoi(argv[4]), win = atoi(argv[5]);
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a = {0}, p; socklen_t pl = sizeof p;
  a.sin_family = AF_INET; a.sin_port = htons(atoi(argv[2]));
  inet_pton(AF_INET, argv[1], &a.sin_addr);
  char req[512]; int n = 2; req[0] = 0; req[1] = 1;
  n += sprintf(req + n, "%s", argv[3]) + 1; n += sprintf(req + n, "octet") + 1;
  n += sprintf(req + n, "blksize") + 1; n += sprintf(req + n, "%d", blk) + 1;
  n += sprintf(req + n, "windowsize") + 1; n += sprintf(req + n, "%d", win) + 1;
  sendto(s, req, n, 0, (struct sockaddr *)&a, sizeof a);
  struct timeval tv = {2, 0}; setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  static char buf[70000]; long total = 0; unsigned expect = 1; int since = 0;
  int r = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&p, &pl);
  if (r < 4) return 2;
  connect(s, (struct sockaddr *)&p, pl);
  unsigned char ack[4] = {0, 4, 0, 0};
  if (buf[1] == 6) { send(s, ack, 4, 0); r = recv(s, buf, sizeof buf, 0); }
  for (;;) {
    if (r < 4) return 3;
    unsigned blkno = ((unsigned char)buf[2] << 8) | (unsigned char)buf[3];
    if (buf[1] == 3 && blkno == (expect & 0xffff)) {
      total += r - 4; expect++; since++;
      if (r - 4 < blk || since == win) {
        ack[2] = blkno >> 8; ack[3] = blkno & 0xff; send(s, ack, 4, 0); since = 0;
      }
      if (r - 4 < blk) break;
    } else if (buf[1] == 3) {  /* gap: ack the last good block */
      unsigned last = (expect - 1) & 0xffff; ack[2] = last >> 8; ack[3] = last & 0xff;
      send(s, ack, 4, 0); since = 0;
    } else return 4;
    r = recv(s, buf, sizeof buf, 0);
  }
  printf("%ld\n", total);
  return 0;
}
"""


def serve_tftp(root: str, port: int) -> None:
    from pxe.tftp.server import TftpServer

    async def main() -> None:
        srv = TftpServer(root, address="127.0.0.1", port=port, max_windowsize=64)
        await srv.start()
        await asyncio.Event().wait()

    run_loop(main())


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return time.perf_counter() - t0


def bench_tftp(root: Path, workdir: Path, reps: int) -> list[tuple[str, str, str, str]]:
    size32 = 32 << 20
    (root / "f32").write_bytes(os.urandom(size32))
    (root / "f8").write_bytes(os.urandom(8 << 20))
    client = workdir / "tftpw"
    subprocess.run(
        ["cc", "-O2", "-o", str(client), "-x", "c", "-"], input=C_CLIENT.encode(), check=True
    )
    ports = {"bronze": free_port(), "tftpd-hpa": free_port()}
    procs = {
        "bronze": subprocess.Popen(
            [
                "taskset",
                "-c",
                "0",
                PY,
                "-m",
                "bench.pxe",
                "--serve-tftp",
                str(root),
                str(ports["bronze"]),
            ],
            cwd=ROOT,
        ),
        "tftpd-hpa": subprocess.Popen(
            [
                "taskset",
                "-c",
                "0",
                "in.tftpd",
                "-L",
                "-a",
                f"127.0.0.1:{ports['tftpd-hpa']}",
                "-s",
                str(root),
                "-u",
                "tftp",
                "-B",
                "65464",
            ]
        ),
    }
    os.chmod(root, 0o755)  # noqa: S103 - in.tftpd drops to user tftp and must read the root
    for p in root.iterdir():
        os.chmod(p, 0o644)
    rows = []
    try:
        time.sleep(1.0)
        mbps: dict[str, dict[str, float]] = {"bronze": {}, "tftpd-hpa": {}}
        for blk in (512, 1468, 8192):
            runs: dict[str, list[float]] = {"bronze": [], "tftpd-hpa": []}
            for _ in range(reps):  # alternately, so both see the same background load
                for name, port in ports.items():
                    t = timed(
                        [
                            "taskset",
                            "-c",
                            "0",
                            "curl",
                            "-sS",
                            "--tftp-blksize",
                            str(blk),
                            "-o",
                            "/dev/null",
                            f"tftp://127.0.0.1:{port}/f32",
                        ]
                    )
                    runs[name].append(size32 / t / 1e6)
            for name in ports:
                mbps[name][f"b{blk}"] = statistics.median(runs[name])
            b, d = mbps["bronze"][f"b{blk}"], mbps["tftpd-hpa"][f"b{blk}"]
            ratios = sorted(x / y for x, y in zip(runs["bronze"], runs["tftpd-hpa"], strict=True))
            rows.append(
                (
                    f"TFTP 32 MiB blksize {blk}, pinned, median of {reps} (MB/s)",
                    f"{b:.0f}",
                    f"{d:.0f}",
                    f"{b / d:.2f}x",
                )
            )
            print(
                f"  blksize {blk}: bronze {b:.0f} MB/s, tftpd-hpa {d:.0f} MB/s (median); "
                f"per-pair ratios {' '.join(f'{r:.2f}' for r in ratios)} "
                f"(median {statistics.median(ratios):.2f})",
                flush=True,
            )
        best = 0.0
        for _ in range(2):
            t = timed(
                [
                    "taskset",
                    "-c",
                    "0",
                    str(client),
                    "127.0.0.1",
                    str(ports["bronze"]),
                    "f32",
                    "1468",
                    "16",
                ]
            )
            best = max(best, size32 / t / 1e6)
        d = mbps["tftpd-hpa"]["b1468"]
        rows.append(
            (
                "TFTP 32 MiB 1468 windowsize 16 vs hpa lock-step (MB/s)",
                f"{best:.0f}",
                f"{d:.0f}",
                f"{best / d:.2f}x",
            )
        )
        print(f"  windowsize 16: bronze {best:.0f} MB/s", flush=True)
        for name, port in ports.items():
            t0 = time.perf_counter()
            ps = [
                subprocess.Popen(
                    [
                        "curl",
                        "-sS",
                        "--tftp-blksize",
                        "1468",
                        "-o",
                        "/dev/null",
                        f"tftp://127.0.0.1:{port}/f8",
                    ]
                )
                for _ in range(50)
            ]
            codes = [p.wait(300) for p in ps]
            t = time.perf_counter() - t0
            assert all(c == 0 for c in codes), codes
            mbps[name]["c50"] = 50 * (8 << 20) / t / 1e6
        b, d = mbps["bronze"]["c50"], mbps["tftpd-hpa"]["c50"]
        rows.append(
            (
                "TFTP 50 clients x 8 MiB, 1468, aggregate (MB/s)",
                f"{b:.0f}",
                f"{d:.0f}",
                f"{b / d:.2f}x",
            )
        )
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["dhcp", "tftp"])
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5, help="TFTP lock-step runs per side (median)")
    ap.add_argument("--rates", default="1000,2000,3000,4000,6000,8000,10000,12000")
    ap.add_argument("--serve-tftp", nargs=2, metavar=("ROOT", "PORT"))
    ap.add_argument("--serve-dhcp", nargs=3, metavar=("ADDRESS", "BRIDGE", "PREFIX"))
    args = ap.parse_args()
    if args.serve_dhcp:
        serve_dhcp(*args.serve_dhcp)
        return
    if args.serve_tftp:
        serve_tftp(args.serve_tftp[0], int(args.serve_tftp[1]))
        return
    rows: list[tuple[str, str, str, str]] = []
    if args.only in (None, "dhcp"):
        rows += bench_dhcp(args.seconds, [int(r) for r in args.rates.split(",")])
    if args.only in (None, "tftp"):
        with tempfile.TemporaryDirectory(prefix="bench-tftp-") as tmp:
            root = Path(tmp) / "root"
            root.mkdir()
            rows += bench_tftp(root, Path(tmp), args.reps)
    w = max(len(r[0]) for r in rows)
    print(f"\n{'measure':{w}s}  {'bronze':>9s}  {'peer':>9s}  {'ratio':>7s}")
    for r in rows:
        print(f"{r[0]:{w}s}  {r[1]:>9s}  {r[2]:>9s}  {r[3]:>7s}")
    print("peer = dnsmasq (DHCP) / tftpd-hpa (TFTP); latency ratio = peer/bronze (>1 is better)")


if __name__ == "__main__":
    main()
