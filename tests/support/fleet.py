"""A simulated fleet for rollout tests: a real ``bronze serve`` app (uvicorn, agent API on free
ports, SQLite or PostgreSQL), images made through the REST API, and one ``bronze-agent simulate``
process whose machines are installed (sandbox A/B disks) with the first image, or diskless
(``netboot``: each boot fetches its script from the server's ``/boot.ipxe``)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.peers.bmc_peers import SYSTEM_UUID
from tests.support.paths import FIXTURES
from tests.support.procs import AGENT_BIN

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def make_image(
    c: httpx.Client, name: str, version: str, args: list[str] | None = None
) -> dict[str, Any]:
    """Upload a kernel and an initrd for ``name`` and create the image."""
    files = {
        f"vmlinuz-{name}": f"kernel {name}\n".encode() * 100,
        f"initrd-{name}": f"initrd {name}\n".encode() * 300,
    }
    for fname, data in files.items():
        r = c.put(
            f"/api/v1/assets/{fname}",
            params={"sha256": hashlib.sha256(data).hexdigest()},
            content=data,
        )
        assert r.status_code in (200, 201), r.text
    body = {
        "name": name,
        "version": version,
        "kernel": f"vmlinuz-{name}",
        "initrds": [f"initrd-{name}"],
        "args": args or [],
    }
    r = c.post("/api/v1/images", json=body)
    assert r.status_code == 201, r.text
    return {**r.json(), "files": files}


def image_dir(c: httpx.Client, image: dict[str, Any], where: Path) -> Path:
    """What ``bronze-agent simulate --installed`` installs: the canonical manifest + files."""
    where.mkdir(parents=True, exist_ok=True)
    canonical = c.get(f"/api/v1/images/{image['name']}/manifest").json()["canonical"]
    (where / "manifest.json").write_text(canonical)
    for fname, data in image["files"].items():
        (where / fname).write_bytes(data)
    return where


@dataclass
class Fleet:
    api: Callable[[], httpx.Client]
    work: Path
    names: list[str]
    ids: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    def root(self, name: str) -> Path:
        return self.work / "machines" / self.ids[name] / "root"

    def ephemeral(self, name: str) -> Path:
        return self.root(name) / "system" / "EPHEMERAL"

    def boots(self, name: str) -> list[dict[str, str]]:
        path = self.root(name) / "var/lib/bronze/boots.json"
        return list(json.loads(path.read_text())) if path.exists() else []

    def agent(self, name: str) -> dict[str, Any]:
        with self.api() as c:
            return dict(c.get(f"/api/v1/machines/{name}/agent").json())


def start_fleet(
    api: Callable[[], httpx.Client],
    ca_pem: bytes,
    work: Path,
    count: int,
    installed: Path | None,
    labels: Callable[[int], dict[str, str]],
    procs: list[subprocess.Popen[bytes]],
    extra: list[str] | None = None,
    netboot: str = "",
    bmc_ports: dict[str, int] | None = None,
    bmc_password: str = "password",  # noqa: S107 - the BMC simulators' default
    diskless: bool | None = None,
    phase: str = "ready",
    powered_off: bool = False,
    bad_tokens: tuple[str, ...] = (),
    redfish_ports: dict[str, int] | None = None,
) -> Fleet:
    """``phase``: where the machines are left (``registered`` for provisioning tests);
    ``powered_off``: machines with a BMC wait for it to power them on (nothing waits for them
    to connect); ``bad_tokens``: these machines' agents get a token the server never issued."""
    diskless = bool(netboot) if diskless is None else diskless
    c = api()
    names = [f"n{i:02}" for i in range(count)]
    ids: dict[str, str] = {}
    tokens: dict[str, str] = {}
    kernel_args = ""
    macs: dict[str, str] = {}
    for i, name in enumerate(names):
        mac = f"02:00:00:10:{i // 256:02x}:{i % 256:02x}"
        body: dict[str, Any] = {
            "name": name,
            "nics": [{"mac": mac}],
            "labels": labels(i),
            "boot_from": "network" if diskless else "disk",
        }
        if redfish_ports and name in redfish_ports:  # a sushy-emulator (fake driver, no auth)
            body["bmc"] = {
                "driver": "redfish",
                "scheme": "http",
                "address": f"127.0.0.1:{redfish_ports[name]}",
                "username": "admin",
                "password": bmc_password,
            }
        if bmc_ports and name in bmc_ports:
            body["bmc"] = {
                "driver": "ipmi",
                "address": f"127.0.0.1:{bmc_ports[name]}",
                "username": "admin",
                "password": bmc_password,
            }
        r = c.post("/api/v1/machines", json=body)
        assert r.status_code == 201, r.text
        ids[name] = r.json()["id"]
        macs[ids[name]] = mac
        for step in {"registered": (), "ready": ("provisioning", "ready")}[phase]:
            assert c.patch(f"/api/v1/machines/{name}", json={"phase": step}).status_code == 200
        tok = c.post(f"/api/v1/machines/{name}/enrollment-token", json={"boot_ref": "sim"}).json()
        tokens[ids[name]] = tok["token"] if name not in bad_tokens else "brz_never_issued_by_it"
        kernel_args = tok["kernel_args"]
    params = dict(w.split("=", 1) for w in kernel_args.split() if "=" in w)
    work.mkdir(parents=True, exist_ok=True)
    (work / "tokens.json").write_text(json.dumps(tokens))
    (work / "ca.pem").write_bytes(ca_pem)
    argv = [
        str(AGENT_BIN),
        "-v",
        "simulate",
        "--count",
        str(count),
        "--root-template",
        str(FIXTURES / "qemu-vm"),
        "--work",
        str(work / "machines"),
        "--server",
        params["bronze.server"],
        "--enroll",
        params["bronze.enroll"],
        "--ca",
        str(work / "ca.pem"),
        "--tokens",
        str(work / "tokens.json"),
        "--heartbeat",
        "1",
        "--ramp",
        "1",
        "--backoff-max",
        "1",
        *(extra or []),
    ]
    if installed is not None:
        argv += ["--installed", str(installed)]
    if powered_off:
        argv.append("--powered-off")
    if redfish_ports:
        systems = {
            ids[n]: f"http://127.0.0.1:{p}/redfish/v1/Systems/{SYSTEM_UUID}"
            for n, p in redfish_ports.items()
        }
        (work / "redfish.json").write_text(json.dumps(systems))
        argv += ["--redfish-systems", str(work / "redfish.json")]
    if netboot:
        (work / "macs.json").write_text(json.dumps(macs))
        argv += ["--netboot", netboot, "--netboot-macs", str(work / "macs.json")]
    if bmc_ports:
        (work / "bmc-ports.json").write_text(json.dumps({ids[n]: p for n, p in bmc_ports.items()}))
        argv += ["--bmc-ports", str(work / "bmc-ports.json")]
    log = open(work / "agents.log", "ab")  # noqa: SIM115 - closed right after the fork
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    log.close()
    procs.append(proc)
    fleet = Fleet(api, work, names, ids, proc)
    if powered_off:  # its machines exist (and listen to their BMCs) once it says so
        wait_for(
            lambda: "simulating" in (work / "agents.log").read_text(errors="replace"),
            60,
            "the simulator started",
        )
        return fleet
    wait_for(
        lambda: all(fleet.agent(n)["connected"] for n in names),
        60,
        "every simulated agent connected",
    )
    return fleet
