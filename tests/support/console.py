"""Console helpers: a signed-in browser-like client (cookie jar, no redirects followed), the
CSRF token of a page, tokens of each role, and direct database writes for data the API itself
refuses (to prove the console escapes whatever is stored)."""

from __future__ import annotations

import re
import socket
import uuid
from pathlib import Path

import httpx
from sqlalchemy import insert

from pxe import PxeSettings
from server.inventory.models import MachineLabel
from tests.peers.apiserver import RunningServer
from tests.support.boot import timeline
from tests.support.ports import free_udp_port
from tests.support.pxe import pxe_request
from tests.support.wait import eventually

XSS = "<img src=x onerror=alert(1)>"
CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


def token_of(srv: RunningServer, role: str, name: str | None = None) -> str:
    r = srv.client().post(
        "/api/v1/tokens", json={"name": name or f"{role}-{uuid.uuid4().hex[:6]}", "role": role}
    )
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def browser(srv: RunningServer, token: str) -> httpx.Client:
    """A client holding the console's session cookie for ``token`` (sign-in asserted)."""
    c = httpx.Client(base_url=srv.url, follow_redirects=False, timeout=30)
    r = c.post("/ui/login", data={"token": token})
    assert r.status_code == 303 and r.headers["location"] == "/ui/", r.text
    return c


def csrf_of(html: str) -> str:
    m = CSRF.search(html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def store_label(srv: RunningServer, machine_id: str, key: str, value: str) -> None:
    """A label written straight to the database (the API refuses such values)."""
    with srv.app.state.ctx.db.write() as s:
        s.execute(insert(MachineLabel).values(machine_id=machine_id, key=key, value=value))


# -- crafted network-boot traffic on loopback ---------------------------------------------------

BOOT_FILE = b"x" * 2000
"""What the test TFTP root serves as ``undionly.kpxe``."""


def pxe_settings(tftp_root: Path) -> PxeSettings:
    """The in-process boot plane on 127.0.0.1 high ports: proxyDHCP (answers go to the relay
    address 127.0.0.1, so the OFFER ties 127.0.0.1 to the MAC) and TFTP from ``tftp_root``."""
    (tftp_root / "undionly.kpxe").write_bytes(BOOT_FILE)
    return PxeSettings(
        enabled=True,
        mode="proxy",
        address="127.0.0.1",
        dhcp_port=free_udp_port(),
        dhcp_client_port=free_udp_port(),
        proxy_port=free_udp_port(),
        tftp_port=free_udp_port(),
        tftp_root=tftp_root,
    )


def boot_traffic(srv: RunningServer, mac: str, workdir: Path) -> None:
    """One machine's network boot as its firmware and iPXE would do it, from 127.0.0.1: a PXE
    DHCPDISCOVER (crafted packet), the TFTP download of the boot file (tftpy), the iPXE script,
    then the kernel and initrd over HTTP. Returns once the timeline shows every step."""
    import tftpy

    dhcp = srv.app.state.pxe.dhcp
    settings = srv.app.state.pxe.settings
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.sendto(pxe_request(mac, xid=0x5151), ("127.0.0.1", dhcp.server_port))
        eventually(lambda: dhcp.stats.answered >= 1, timeout=20)
    finally:
        sock.close()
    out = workdir / "boot-file"
    tftpy.TftpClient("127.0.0.1", settings.tftp_port).download("undionly.kpxe", str(out))
    assert out.read_bytes() == BOOT_FILE
    anon = httpx.Client(base_url=srv.url, timeout=30)
    script = anon.get("/boot.ipxe", params={"mac": mac})
    assert script.status_code == 200 and "vmlinuz" in script.text, script.text
    assert anon.get("/assets/vmlinuz").status_code == 200
    assert anon.get("/assets/initrd.img").status_code == 200

    def complete() -> bool:
        kinds = {e["kind"] for e in timeline(srv.client(), mac)}
        return {"DISCOVER", "OFFER", "TFTP_COMPLETE", "SCRIPT", "KERNEL", "INITRD"} <= kinds

    eventually(complete, timeout=30)
