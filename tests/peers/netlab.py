"""Network lab helpers for tests and benches: namespaces, bridges, taps, QEMU, event-loop threads.

Safety rules (docs/pxe.md, LAB-NOTES): a host blackhole route for the lab subnet is added
before anything else, every lab address lives inside a namespace created here, every process is
started here and killed by PID, and `Lab.close()` removes all of it.

`LoopThread(netns=...)` runs an asyncio loop in a thread that first joins the namespace with
setns(2): network namespaces are per thread, so every socket that loop creates lives in the
lab, while the test itself stays in the host namespace.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
IPXE_ROMS = Path("/usr/lib/ipxe/qemu")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


def free_port(kind: int = socket.SOCK_DGRAM, host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def eventually(check: Callable[[], T], timeout: float = 5.0, interval: float = 0.02) -> T:
    """Polls `check` until it returns a truthy value (returned) or raises at the deadline."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {last or value!r}")
        time.sleep(interval)


def setns(name: str) -> None:
    """Moves the calling thread into network namespace `name`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


class LoopThread:
    """An asyncio loop in a daemon thread (optionally in a netns); `run()` waits for a result."""

    def __init__(self, netns: str | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()

        def main() -> None:
            try:
                if netns:
                    setns(netns)
            except BaseException as exc:  # noqa: BLE001
                ready.set_exception(exc)
                return
            asyncio.set_event_loop(self.loop)
            ready.set_result(None)
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, daemon=True, name=f"loop-{netns or 'host'}")
        self.thread.start()
        ready.result(timeout=5)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        async def wrap() -> T:
            return fn()

        return self.run(wrap(), timeout)

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def require_tools(*tools: str) -> None:
    """Raises (never skips) with the reason when a peer program is missing."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"missing peer programs: {missing}; run scripts/install-system-deps.sh")
    if os.geteuid() != 0:
        raise RuntimeError("network namespace tests need root")


class Lab:
    """One namespace with a bridge at `.1` of 10.99.N.0/24, taps for VMs, and processes by PID."""

    def __init__(self, tag: str | None = None, subnet_index: int | None = None) -> None:
        require_tools("ip")
        pid = os.getpid()
        self.tag = tag or f"{pid % 100000}"
        idx = subnet_index if subnet_index is not None else 100 + pid % 150
        self.subnet = f"10.99.{idx}.0/24"
        self.prefix = f"10.99.{idx}"
        self.server_ip = f"{self.prefix}.1"
        self.ns = f"bzpxe{self.tag}"
        self.bridge = "br0"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.taps: list[str] = []
        self._route = False
        self._netns = False
        self.tmp: list[Path] = []
        try:
            # FIRST: a host blackhole route, so a mistake in the host namespace goes nowhere.
            sh("ip", "route", "add", "blackhole", self.subnet)
            self._route = True
            sh("ip", "netns", "add", self.ns)
            self._netns = True
            self.nsexec("ip", "link", "set", "lo", "up")
            self.nsexec("ip", "link", "add", self.bridge, "type", "bridge")
            self.nsexec("ip", "addr", "add", f"{self.server_ip}/24", "dev", self.bridge)
            self.nsexec("ip", "link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise

    def nsexec(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ns, *args, check=check)

    def add_tap(self) -> str:
        name = f"tap{len(self.taps)}"
        self.nsexec("ip", "tuntap", "add", "dev", name, "mode", "tap")
        self.nsexec("ip", "link", "set", name, "master", self.bridge)
        self.nsexec("ip", "link", "set", name, "up")
        self.taps.append(name)
        return name

    def add_veth_ns(self, suffix: str, address: str) -> str:
        """A second namespace joined to the bridge by a veth pair (a client/relay host)."""
        other = f"{self.ns}{suffix}"
        sh("ip", "netns", "add", other)
        self.tmp.append(Path(f"/run/netns/{other}"))
        self.nsexec(
            "ip",
            "link",
            "add",
            f"v{suffix}",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            other,
        )
        self.nsexec("ip", "link", "set", f"v{suffix}", "master", self.bridge)
        self.nsexec("ip", "link", "set", f"v{suffix}", "up")
        sh("ip", "netns", "exec", other, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", other, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
        sh("ip", "netns", "exec", other, "ip", "link", "set", "eth0", "up")
        return other

    def spawn(self, *args: str, netns: str | None = None, **kw: Any) -> subprocess.Popen[bytes]:
        cmd = ["ip", "netns", "exec", netns or self.ns, *args]
        proc = subprocess.Popen(cmd, start_new_session=True, **kw)  # noqa: S603
        self.procs.append(proc)
        return proc

    def qemu(
        self,
        tap: str,
        mac: str,
        *,
        uefi: bool = False,
        log: Path | None = None,
        workdir: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        require_tools("qemu-system-x86_64")
        args = [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-machine",
            "q35",
            "-m",
            "256",
            "-nographic",
            "-no-reboot",
            "-boot",
            "n",
            "-netdev",
            f"tap,id=n0,ifname={tap},script=no,downscript=no",
        ]
        if uefi:
            assert workdir is not None
            vars_copy = workdir / f"vars-{tap}.fd"
            shutil.copy(OVMF_VARS, vars_copy)
            args += [
                "-drive",
                f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                "-drive",
                f"if=pflash,format=raw,file={vars_copy}",
                "-device",
                f"virtio-net-pci,netdev=n0,mac={mac},romfile=",
            ]
        else:
            args += [
                "-device",
                f"virtio-net-pci,netdev=n0,mac={mac},romfile={IPXE_ROMS / 'pxe-virtio.rom'}",
            ]
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
        return self.spawn(*args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: ip netns exec + child
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    def close(self) -> None:
        for proc in self.procs:
            self.kill(proc)
        self.procs.clear()
        for path in self.tmp:
            sh("ip", "netns", "del", path.name, check=False)
        if self._netns:
            sh("ip", "netns", "del", self.ns, check=False)
            self._netns = False
        if self._route:
            sh("ip", "route", "del", "blackhole", self.subnet, check=False)
            self._route = False

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
