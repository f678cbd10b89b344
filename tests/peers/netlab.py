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
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
IPXE_ROMS = Path("/usr/lib/ipxe/qemu")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


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

    def __init__(
        self,
        netns: str | None = None,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
    ) -> None:
        self.loop = loop_factory()
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
        memory_mb: int = 256,
    ) -> subprocess.Popen[bytes]:
        require_tools("qemu-system-x86_64")
        args = [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-machine",
            "q35",
            "-m",
            str(memory_mb),
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
                # NOTE: QEMU's default option ROM for virtio-net (Debian's iPXE efi-virtio.rom,
                # on QEMU's firmware path) boots; naming a ROM with an absolute romfile= left
                # SeaBIOS without a network boot entry here, so the default is used.
                f"virtio-net-pci,netdev=n0,mac={mac}",
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


class BootHttp:
    """A tiny asyncio HTTP/1.1 server for labs: serves `routes` (path -> bytes or a function of
    the query) and records every request line, so tests can assert that firmware reached it."""

    def __init__(
        self,
        address: str,
        port: int,
        routes: dict[str, bytes | Callable[[dict[str, str]], bytes]],
    ) -> None:
        self.address, self.port, self.routes = address, port, routes
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.address, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        # NOTE: closing the connections ends their handlers; cancelling them instead makes
        # Python 3.11's StreamReaderProtocol log a CancelledError traceback per connection.
        for writer in list(self._writers):
            writer.close()
        await asyncio.gather(*self._clients, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from urllib.parse import parse_qsl, urlsplit

        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)
        self._writers.add(writer)
        try:
            while True:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                parts = line.split(" ")
                if len(parts) != 3:
                    break
                url = urlsplit(parts[1])
                query = dict(parse_qsl(url.query))
                self.requests.append((url.path, query))
                route = self.routes.get(url.path)
                if route is None:
                    body, status = b"not found\n", "404 Not Found"
                else:
                    body = route(query) if callable(route) else route
                    status = "200 OK"
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n"
                    "Content-Type: application/octet-stream\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            ConnectionError,
            asyncio.LimitOverrunError,
        ):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]


class RouterAdvertiser:
    """Sends an empty IPv6 router advertisement (M=0, O=0, lifetime 0) every `interval` seconds.

    iPXE waits ~13 s for IPv6 autoconfiguration unless a router advertisement arrives; one without
    the managed/other flags completes it at once (iPXE `ipv6conf_rx_router_advertisement`). Run in
    a `LoopThread` inside the lab namespace: the socket lives there.
    """

    def __init__(self, interface: str, interval: float = 0.5) -> None:
        self.interface, self.interval = interface, interval
        self._task: asyncio.Task[None] | None = None
        self.sent = 0

    async def start(self) -> None:
        import struct

        ifindex = socket.if_nametoindex(self.interface)
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode())
        sock.setblocking(False)
        ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 0, 0, 0)

        async def run() -> None:
            try:
                while True:
                    try:
                        sock.sendto(ra, ("ff02::1", 0, 0, ifindex))
                        self.sent += 1
                    except OSError:
                        pass  # no link-local address yet (no carrier): try again
                    await asyncio.sleep(self.interval)
            finally:
                sock.close()

        self._task = asyncio.get_running_loop().create_task(run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
