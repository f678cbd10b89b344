"""Node OS image boot timeline: QEMU (TCG, SeaBIOS) boots the image's kernel and initramfs and
every console line is stamped with the seconds since QEMU started (power-on).

    .venv/bin/python -m bench.osboot --image /var/cache/bronze-image/images/KEY
    .venv/bin/python -m bench.osboot --kernel vmlinuz --initrd initrd.img --runs 2

The VM: ``-machine q35,accel=tcg``, 1 vCPU, 1 GiB, a virtio-net NIC on QEMU's user network with
``restrict=on`` (its built-in DHCP answers; nothing leaves the VM), enrollment aimed at the VM's
own 127.0.0.1 (refused at once: the refusal is the last mark), a 1 GiB virtio disk (so the disk
driver is loaded as on the lab's VMs), serial console on stdout, kernel args ``console=ttyS0
printk.time=1``. QEMU loads the kernel and initramfs itself (``-kernel``/``-initrd``): there is
no iPXE download in these figures (the lab's figures have it: docs/lab.md).

Marks (first console line matching each; the kernel's own ``[  t.tttttt]`` is printed too): the
kernel's first line, initramfs unpacked, ``/init`` started, modules loaded, DHCP lease, the
agent started, its first enrollment attempt. Run it under ``flock /var/lock/bronze-heavy.lock``:
a boot keeps a core busy for tens of seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARKS: tuple[tuple[str, str], ...] = (
    ("kernel starts", r"Linux version"),
    ("initramfs unpack starts", r"Trying to unpack rootfs"),
    ("initramfs unpacked", r"Freeing initrd memory"),
    ("/init runs", r"bronze init: .*starting \(kernel"),
    ("modules loaded", r"bronze init: .*modules loaded"),
    ("DHCP lease", r"bronze init: .*network: .* up"),
    ("agent started", r"bronze init: .*starting bronze-agent"),
    ("agent: first enroll attempt", r"session (ended|dropped|failed)"),
)
KTIME = re.compile(r"^\[\s*(\d+\.\d+)\]")


def boot(kernel: Path, initrd: Path, timeout: float, extra: str) -> list[tuple[float, str]]:
    """One boot; returns (seconds since QEMU started, line) for every console line."""
    with tempfile.TemporaryDirectory() as tmp:
        disk = Path(tmp) / "disk.raw"
        with disk.open("wb") as fh:
            fh.truncate(1 << 30)
        args = (
            "console=ttyS0 printk.time=1 panic=-1 bronze.machine=bench-0 bronze.token=x "
            "bronze.server=127.0.0.1:7444 bronze.enroll=127.0.0.1:7443 " + extra
        )
        cmd = [
            "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-m", "1024", "-smp", "1",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", args,
            "-nic", "user,model=virtio-net-pci,restrict=on",
            "-drive", f"file={disk},format=raw,if=virtio",
            "-nographic", "-no-reboot", "-serial", "stdio", "-monitor", "none",
        ]  # fmt: skip
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        lines: list[tuple[float, str]] = []
        buf = b""
        last = MARKS[-1][1]
        try:
            while time.monotonic() - t0 < timeout:
                if not sel.select(0.5):
                    continue
                chunk = proc.stdout.read()
                if not chunk:
                    break
                buf += chunk
                *done, buf = buf.split(b"\n")
                now = time.monotonic() - t0
                for raw in done:
                    line = raw.decode(errors="replace").replace("\r", "")
                    lines.append((now, line))
                if any(re.search(last, line) for _, line in lines[-len(done) :]):
                    break
        finally:
            proc.kill()
            proc.wait()
        return lines


def timeline(lines: list[tuple[float, str]]) -> list[tuple[str, float | None, str]]:
    out: list[tuple[str, float | None, str]] = []
    for name, pattern in MARKS:
        hit = next(((t, ln) for t, ln in lines if re.search(pattern, ln)), None)
        if hit is None:
            out.append((name, None, ""))
            continue
        m = KTIME.match(hit[1])
        out.append((name, hit[0], f"kernel {m.group(1)} s" if m else ""))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image", type=Path, help="an image dir (vmlinuz + initrd.img)")
    p.add_argument("--kernel", type=Path)
    p.add_argument("--initrd", type=Path)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--timeout", type=float, default=240.0)
    p.add_argument("--append", default="", help="extra kernel arguments")
    p.add_argument("--log", type=Path, help="write the last run's stamped console here")
    a = p.parse_args()
    kernel = a.kernel or (a.image / "vmlinuz" if a.image else None)
    initrd = a.initrd or (a.image / "initrd.img" if a.image else None)
    if kernel is None or initrd is None:
        p.error("give --image DIR or --kernel and --initrd")
    print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
    for run in range(a.runs):
        cpu0 = os.times()
        lines = boot(kernel, initrd, a.timeout, a.append)
        cpu1 = os.times()
        qemu_cpu = (cpu1.children_user + cpu1.children_system) - (
            cpu0.children_user + cpu0.children_system
        )
        print(f"\nrun {run + 1}: QEMU CPU {qemu_cpu:.1f} s, load {os.getloadavg()[0]:.2f}")
        print(f"{'mark':32} {'s after power-on':>16}  kernel clock")
        for name, t, note in timeline(lines):
            print(f"{name:32} {'-' if t is None else f'{t:16.1f}'}  {note}")
        if a.log:
            a.log.write_text("".join(f"{t:8.2f} {ln}\n" for t, ln in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
