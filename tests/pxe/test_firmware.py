# ruff: noqa: S104
"""Real firmware under QEMU (TCG) in a network namespace: iPXE BIOS ROM and OVMF native PXE.

Each test creates its own lab (blackhole route first, netns, bridge, tap), runs bronze's DHCP
and TFTP plus a small HTTP server inside it (an event loop thread that setns()'d into the lab),
boots a VM on the tap, and asserts on our timeline and on the HTTP requests the firmware made.
The VM is killed as soon as the kernel is requested.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pxe.backend import BootDecision, ListSink, StaticBackend, TimelineKind
from pxe.dhcp.decide import Mode
from pxe.ipxe import BootAction, BootProfile, RenderContext, render
from pxe.service import PxeService, PxeSettings
from tests.peers.netlab import (
    BootHttp,
    Lab,
    LoopThread,
    RouterAdvertiser,
    require_tools,
)
from tests.support.wait import eventually

pytestmark = [pytest.mark.netns, pytest.mark.qemu]
KERNEL = os.urandom(64 * 1024)
INITRD = os.urandom(16 * 1024)
PROFILE = BootProfile(
    name="lab",
    kernel="${server}/assets/vmlinuz",
    initrds=("${server}/assets/initrd.img",),
    args=("console=ttyS0", "bronze.mac=${mac}"),
)


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_tools("ip", "qemu-system-x86_64", "dnsmasq")
    with Lab() as lab:
        yield lab


class Env:
    def __init__(self, lab: Lab, tmp: Path, mode: Mode, mac: str) -> None:
        self.lab, self.mac = lab, mac
        base = f"http://{lab.server_ip}:8080"
        self.sink = ListSink()
        self.backend = StaticBackend(
            {mac: BootDecision(known=True, allow_boot=True, static_ip=f"{lab.prefix}.42")},
            default=BootDecision(),
        )
        settings = PxeSettings(
            enabled=True,
            mode=mode,
            interface=lab.bridge,
            address=lab.server_ip,
            http_base_url=base,
            tftp_root=Path("/usr/lib/ipxe"),
            state_dir=tmp / "state",
            pool_start=f"{lab.prefix}.100",
            pool_end=f"{lab.prefix}.150",
            tftp_timeout=1.0,
        )
        self.service = PxeService(settings, self.backend, self.sink)

        def script(q: dict[str, str]) -> bytes:
            ctx = RenderContext(mac=q["mac"], server=base)
            return render(BootAction.PROFILE, ctx, PROFILE).encode()

        self.http = BootHttp(
            lab.server_ip,
            8080,
            {"/boot.ipxe": script, "/assets/vmlinuz": KERNEL, "/assets/initrd.img": INITRD},
        )
        self.ra = RouterAdvertiser(lab.bridge)
        self.loop = LoopThread(netns=lab.ns)
        self.loop.run(self.service.start())
        self.loop.run(self.http.start())
        self.loop.run(self.ra.start())

    def close(self) -> None:
        self.loop.run(self.ra.stop())
        self.loop.run(self.http.stop())
        self.loop.run(self.service.stop())
        self.loop.close()

    def wait_for_kernel(self, vm: object, timeout: float) -> float:
        t0 = time.monotonic()
        try:
            eventually(
                lambda: "/assets/vmlinuz" in self.http.paths(), timeout=timeout, interval=0.1
            )
        except AssertionError as exc:
            raise AssertionError(
                f"no kernel fetch; http={self.http.requests} "
                f"timeline={[(e.kind.value, dict(e.detail)) for e in self.sink.events]} "
                f"dhcp={self.service.dhcp.stats}"
            ) from exc
        return time.monotonic() - t0


def _boot(lab: Lab, env: Env, tmp: Path, *, uefi: bool, timeout: float) -> float:
    tap = lab.add_tap()
    vm = lab.qemu(tap, env.mac, uefi=uefi, log=tmp / "serial.log", workdir=tmp)
    try:
        took = env.wait_for_kernel(vm, timeout)
    except AssertionError as exc:
        serial = (tmp / "serial.log").read_bytes()[-3000:].decode("latin-1", "replace")
        raise AssertionError(f"{exc}\nserial tail:\n{serial}") from None
    finally:
        lab.kill(vm)
    script = [q for p, q in env.http.requests if p == "/boot.ipxe"]
    assert script and script[0]["mac"] == env.mac
    return took


def test_full_mode_bios_ipxe_rom(lab: Lab, tmp_path: Path) -> None:
    mac = "52:54:00:b1:05:01"
    env = Env(lab, tmp_path, Mode.FULL, mac)
    try:
        _boot(lab, env, tmp_path, uefi=False, timeout=60)
        kinds = env.sink.kinds(mac)
        assert kinds[:4] == [
            TimelineKind.DISCOVER,
            TimelineKind.OFFER,
            TimelineKind.REQUEST,
            TimelineKind.ACK,
        ], kinds
        acks = [e for e in env.sink.events if e.kind is TimelineKind.ACK]
        assert acks[0].detail["yiaddr"] == f"{lab.prefix}.42"  # the static reservation
        assert str(acks[0].detail["file"]).startswith(f"http://{lab.server_ip}:8080/boot.ipxe")
        assert (tmp_path / "state" / "leases.json").exists() or env.service.dhcp.leases.dirty
    finally:
        env.close()


def test_proxy_mode_beside_dnsmasq(lab: Lab, tmp_path: Path) -> None:
    mac = "52:54:00:b1:05:02"
    dhcp_ns = lab.add_veth_ns("d", f"{lab.prefix}.2")
    pid_file = tmp_path / "dnsmasq.pid"
    dnsmasq = lab.spawn(
        "dnsmasq",
        "--keep-in-foreground",
        "--log-facility=-",
        "--conf-file=/dev/null",
        f"--pid-file={pid_file}",
        "--no-ping",
        "--port=0",
        "--bind-interfaces",
        "--interface=eth0",
        f"--dhcp-range={lab.prefix}.100,{lab.prefix}.150,255.255.255.0,1h",
        f"--dhcp-leasefile={tmp_path / 'dnsmasq.leases'}",
        "--log-dhcp",
        netns=dhcp_ns,
        stdout=open(tmp_path / "dnsmasq.log", "wb"),  # noqa: SIM115
        stderr=__import__("subprocess").STDOUT,
    )
    env = Env(lab, tmp_path, Mode.PROXY, mac)
    try:
        eventually(lambda: pid_file.exists(), timeout=5)
        assert dnsmasq.poll() is None, (tmp_path / "dnsmasq.log").read_text()
        _boot(lab, env, tmp_path, uefi=False, timeout=60)
        kinds = env.sink.kinds(mac)
        assert TimelineKind.OFFER in kinds, kinds
        offers = [e for e in env.sink.events if e.kind is TimelineKind.OFFER]
        assert all(e.detail["yiaddr"] == "0.0.0.0" for e in offers)  # noqa: S104 - proxy: no address
        log = (tmp_path / "dnsmasq.log").read_text()
        assert "DHCPACK" in log and mac in log, log[-2000:]
    finally:
        env.close()
        lab.kill(dnsmasq)


def test_uefi_ovmf_native_pxe_then_ipxe(lab: Lab, tmp_path: Path) -> None:
    mac = "52:54:00:b1:05:03"
    env = Env(lab, tmp_path, Mode.FULL, mac)
    try:
        _boot(lab, env, tmp_path, uefi=True, timeout=90)
        done = [e for e in env.sink.events if e.kind is TimelineKind.TFTP_COMPLETE]
        size = Path("/usr/lib/ipxe/snponly.efi").stat().st_size
        assert any(
            e.detail["file"] == "snponly.efi" and e.detail["bytes"] == size and e.mac == mac
            for e in done
        ), [(e.kind.value, dict(e.detail)) for e in env.sink.events]
        offers = [e for e in env.sink.events if e.kind is TimelineKind.OFFER]
        assert offers[0].detail["file"] == "snponly.efi"  # firmware first
        assert any(str(e.detail["file"]).startswith("http://") for e in offers)  # then iPXE
    finally:
        env.close()
