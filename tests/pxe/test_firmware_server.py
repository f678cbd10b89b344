# ruff: noqa: S104
"""Real firmware through a real ``bronze serve`` (and a separate ``bronze pxe --server``).

The processes run inside the lab namespace (``ip netns exec``): uvicorn bound to the lab address,
DHCP (full mode) and TFTP on the lab bridge. The test talks to the API from a thread that joined
the namespace. Kernel and initrd are uploaded assets; the boot script comes from the database;
the assertions read bronze's own timeline through the API.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.peers.netlab import Lab, LoopThread, RouterAdvertiser, require_tools
from tests.support.wait import eventually

pytestmark = [pytest.mark.netns, pytest.mark.qemu]
BRONZE = str(Path(sys.executable).with_name("bronze"))
# iPXE checks the kernel's format before it fetches the initrd, so the "kernel" is a real image
# that firmware can load: iPXE itself (EFI binary for UEFI, Linux bzImage format for BIOS).
EFI_KERNEL = Path("/usr/lib/ipxe/ipxe.efi")
BIOS_KERNEL = Path("/usr/lib/ipxe/ipxe.lkrn")
INITRD = os.urandom(64 * 1024 + 5)


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_tools("ip", "qemu-system-x86_64")
    for image in (EFI_KERNEL, BIOS_KERNEL):
        if not image.exists():
            raise RuntimeError(
                f"missing {image}: install Debian's ipxe package (scripts/install-system-deps.sh)"
            )
    with Lab() as lab:
        yield lab


class Bronze:
    """A ``bronze serve`` process in the lab, and an API client living in the namespace."""

    def __init__(self, lab: Lab, tmp: Path, *, pxe: bool) -> None:
        self.lab, self.tmp = lab, tmp
        self.base = f"http://{lab.server_ip}:8080"
        self.token = "brz_" + secrets.token_urlsafe(32)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRONZE_")}
        env.update(
            {
                "BRONZE_DATA_DIR": str(tmp / "data"),
                "BRONZE_ADMIN_TOKEN": self.token,
                "BRONZE_API_HOST": lab.server_ip,
                "BRONZE_API_PORT": "8080",
                "BRONZE_AGENT_API_ENABLED": "false",
                "BRONZE_POWER_SYNC_ENABLED": "false",
                "BRONZE_LOG_LEVEL": "warning",
                **pxe_env(lab, tmp / "pxe-serve", enabled=pxe),
            }
        )
        self.log = tmp / "serve.log"
        self.proc = lab.spawn(
            BRONZE,
            "serve",
            env=env,
            stdout=open(self.log, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        self.ns = LoopThread(netns=lab.ns)
        self.ra = RouterAdvertiser(lab.bridge)
        try:
            eventually(self._up, timeout=60, interval=0.2)
        except AssertionError:
            raise AssertionError(
                f"bronze serve did not come up:\n{self.log.read_text()[-3000:]}"
            ) from None
        self.ns.run(self.ra.start())

    def _up(self) -> bool:
        assert self.proc.poll() is None, f"bronze serve exited {self.proc.returncode}"
        try:
            return self.call("GET", "/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def call(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token}"}

        def go() -> httpx.Response:  # runs in the namespace thread: its sockets live in the lab
            return httpx.request(method, self.base + path, headers=headers, timeout=10, **kw)

        return self.ns.call(go, timeout=20)

    def timeline(self, machine: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/api/v1/machines/{machine}/timeline").json()["items"])

    def seed(self, mac: str, kernel: bytes, ip: str | None = None) -> None:
        for name, body in (("vmlinuz", kernel), ("initrd.img", INITRD)):
            r = self.call(
                "PUT",
                f"/api/v1/assets/{name}",
                params={"sha256": hashlib.sha256(body).hexdigest()},
                content=body,
            )
            assert r.status_code == 201, r.text
        r = self.call(
            "POST",
            "/api/v1/profiles",
            json={
                "name": "lab",
                "selector": "role=lab",
                "kernel": "vmlinuz",
                "initrds": ["initrd.img"],
                "args": ["console=ttyS0", "bronze.mac=${mac}"],
            },
        )
        assert r.status_code == 201, r.text
        r = self.call(
            "POST",
            "/api/v1/machines",
            json={"name": "vm1", "nics": [{"mac": mac, "ip": ip}], "labels": {"role": "lab"}},
        )
        assert r.status_code == 201, r.text

    def close(self) -> None:
        self.ns.run(self.ra.stop())
        self.ns.close()
        stop(self.lab, self.proc)


def pxe_env(lab: Lab, state: Path, *, enabled: bool) -> dict[str, str]:
    return {
        "BRONZE_PXE_ENABLED": "true" if enabled else "false",
        "BRONZE_PXE_MODE": "full",
        "BRONZE_PXE_INTERFACE": lab.bridge,
        "BRONZE_PXE_ADDRESS": lab.server_ip,
        "BRONZE_PXE_HTTP_BASE_URL": f"http://{lab.server_ip}:8080",
        "BRONZE_PXE_POOL_START": f"{lab.prefix}.100",
        "BRONZE_PXE_POOL_END": f"{lab.prefix}.150",
        "BRONZE_PXE_TFTP_ROOT": "/usr/lib/ipxe",
        "BRONZE_PXE_STATE_DIR": str(state),
    }


def stop(lab: Lab, proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM first (a clean shutdown flushes timelines and leases), then the lab's SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            lab.kill(proc)


def boot_until_initrd(
    lab: Lab,
    bronze: Bronze,
    mac: str,
    tmp: Path,
    *,
    uefi: bool,
    timeout: float,
    extra_log: Path | None = None,
) -> list[dict[str, Any]]:
    tap = lab.add_tap()
    vm = lab.qemu(tap, mac, uefi=uefi, log=tmp / "serial.log", workdir=tmp)
    try:
        return eventually(
            lambda: (
                any(
                    e["kind"] == "INITRD" and e["detail"]["complete"]
                    for e in bronze.timeline("vm1")
                )
                and bronze.timeline("vm1")
            ),
            timeout=timeout,
            interval=0.5,
        )
    except AssertionError:
        serial = (tmp / "serial.log").read_bytes()[-2000:].decode("latin-1", "replace")
        extra = extra_log.read_text()[-3000:] if extra_log else ""
        raise AssertionError(
            f"no initrd served; timeline={bronze.timeline('vm1')}\nserial:\n{serial}\n"
            f"serve log:\n{bronze.log.read_text()[-3000:]}\n{extra}"
        ) from None
    finally:
        lab.kill(vm)


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["kind"] for e in events]


def test_uefi_boot_through_bronze_serve(lab: Lab, tmp_path: Path) -> None:
    mac = "52:54:00:b2:05:01"
    bronze = Bronze(lab, tmp_path, pxe=True)
    kernel_image = EFI_KERNEL.read_bytes()
    try:
        reserved = (
            f"{lab.prefix}.42"  # outside the pool (.100-.150): full mode answers the reservation
        )
        bronze.seed(mac, kernel_image, ip=reserved)
        events = boot_until_initrd(lab, bronze, mac, tmp_path, uefi=True, timeout=150)
        k = kinds(events)
        assert k[:4] == ["DISCOVER", "OFFER", "REQUEST", "ACK"], k
        assert {e["detail"]["yiaddr"] for e in events if e["kind"] in ("OFFER", "ACK")} == {
            reserved
        }, events
        size = Path("/usr/lib/ipxe/snponly.efi").stat().st_size
        tftp = [e for e in events if e["kind"] == "TFTP_COMPLETE"]
        assert any(
            e["detail"]["file"] == "snponly.efi" and e["detail"]["bytes"] == size for e in tftp
        ), events
        script = k.index("SCRIPT")
        assert k.index("TFTP_COMPLETE") < script < k.index("KERNEL") < k.index("INITRD"), k
        assert events[script]["detail"]["profile"] == "lab"
        assert events[script]["detail"]["action"] == "profile"
        kernel = next(e for e in events if e["kind"] == "KERNEL")["detail"]
        initrd = next(e for e in events if e["kind"] == "INITRD")["detail"]
        assert (kernel["asset"], kernel["bytes"], kernel["complete"]) == (
            "vmlinuz",
            len(kernel_image),
            True,
        )
        assert (initrd["asset"], initrd["bytes"], initrd["complete"]) == (
            "initrd.img",
            len(INITRD),
            True,
        )
        offers = [e for e in events if e["kind"] == "OFFER"]
        assert offers[0]["detail"]["file"] == "snponly.efi"  # firmware first, then iPXE -> HTTP
        assert any(str(e["detail"]["file"]).startswith(f"{bronze.base}/boot.ipxe") for e in offers)
        assert {e["source"] for e in events} == {"server"}
    finally:
        bronze.close()


def test_bios_boot_through_bronze_pxe_process(lab: Lab, tmp_path: Path) -> None:
    mac = "52:54:00:b2:05:02"
    bronze = Bronze(lab, tmp_path, pxe=False)
    pxe_log = tmp_path / "pxe.log"
    try:
        bronze.seed(mac, BIOS_KERNEL.read_bytes())
        r = bronze.call("POST", "/api/v1/tokens", json={"name": "rack1", "role": "boot"})
        token_file = tmp_path / "boot.token"
        token_file.write_text(r.json()["token"] + "\n")
        token_file.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRONZE_")}
        env.update(pxe_env(lab, tmp_path / "pxe-state", enabled=True))
        proc = lab.spawn(
            BRONZE,
            "pxe",
            "--server",
            bronze.base,
            "--token-file",
            str(token_file),
            env=env,
            stdout=open(pxe_log, "wb"),
            stderr=subprocess.STDOUT,
        )  # noqa: SIM115
        assert r.json()["token"] not in " ".join(proc.args)  # type: ignore[arg-type]
        try:
            events = boot_until_initrd(
                lab, bronze, mac, tmp_path, uefi=False, timeout=90, extra_log=pxe_log
            )
            # DHCP steps posted by the rack process; the events it sends in batches may still be
            # on their way when the initrd is served.
            events = eventually(
                lambda: "ACK" in kinds(bronze.timeline("vm1")) and bronze.timeline("vm1"),
                timeout=10,
            )
        finally:
            stop(lab, proc)
        assert proc.returncode == 0, pxe_log.read_text()[-2000:]
        by_source: dict[str, list[str]] = {}
        for e in events:
            by_source.setdefault(e["source"], []).append(e["kind"])
        assert by_source["pxe:rack1"][:4] == ["DISCOVER", "OFFER", "REQUEST", "ACK"], by_source
        assert by_source["server"][:3] == ["SCRIPT", "KERNEL", "INITRD"], by_source
        ack = next(e for e in events if e["kind"] == "ACK")
        assert ack["detail"]["yiaddr"].startswith(f"{lab.prefix}.1")  # from the pool
        assert str(ack["detail"]["file"]).startswith(f"{bronze.base}/boot.ipxe?mac=")
    finally:
        bronze.close()
