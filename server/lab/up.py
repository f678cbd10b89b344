"""``bronze lab up``: checks first, host safety next, then each resource recorded before it exists.

Order: tools check -> blackhole route for the subnet -> namespace + bridge -> virtlogd, libvirtd
(inside the namespace, so the domains' taps land on its bridge) -> disks + domains -> one
sushy-emulator per VM and vbmcd (127.0.0.1 *of the namespace*; they reach libvirt through its
unix socket, which is a file and so crosses namespaces) -> router advertiser -> ``bronze serve``
bound to the bridge address (DHCP/TFTP/HTTP boot plane + agent API) -> image build + upload ->
agent profile -> machines registered with their BMCs, all through the REST API.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from server.lab import config as cfg
from server.lab.netns import Api, default_signals, in_netns, wait_for
from server.lab.state import (
    LIBVIRT_DIRS,
    Records,
    alive,
    existing_paths,
    run,
    start_time,
    status,
)
from server.lab.tools import LabError, Log, ensure_venv, missing_tools, repo_root

__all__ = ["LabError", "status", "up"]

CACHE = Path("/var/cache/bronze-lab")
IMAGE_CACHE = Path("/var/cache/bronze-image")
IMAGE_NAME = "lab-os"
HASH_PY = (
    "import bcrypt, sys; pw = sys.stdin.readline().strip().encode(); "
    "print(bcrypt.hashpw(pw, bcrypt.gensalt(rounds=6)).decode())"
)


class Up:
    def __init__(self, plan: cfg.Plan, records: Records, log: Log, cache: Path) -> None:
        self.plan, self.rec, self.log, self.cache = plan, records, log, cache
        self.dir = Path(plan.state_dir)
        self.ns = plan.netns

    # -- helpers ---------------------------------------------------------------------------
    def nsrun(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.ns, *args, check=True, timeout=timeout)

    def spawn(
        self, role: str, argv: list[str], env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        log_file = self.dir / f"{role}.log"
        pid_file = self.dir / f"{role}.pidstart"
        rec = self.rec.add(
            "proc", role=role, pid=None, start=None, log=str(log_file), pid_file=str(pid_file)
        )

        def child() -> None:
            # before exec, in the child: a killed `up` may never record the PID, so the child
            # writes "PID STARTTIME" itself and `down` reads it (exec keeps both)
            default_signals()
            me = os.getpid()
            with open(pid_file, "w") as f:
                f.write(f"{me} {start_time(me)}")

        with open(log_file, "ab") as out:
            proc = subprocess.Popen(  # noqa: S603
                ["ip", "netns", "exec", self.ns, *argv],
                start_new_session=True,  # its own process group: down kills the group
                preexec_fn=child,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.rec.update(rec, pid=proc.pid, start=start_time(proc.pid))
        return rec

    def secret_file(self, name: str, text: str) -> Path:
        path = self.dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path

    # -- steps -----------------------------------------------------------------------------
    def network(self) -> None:
        p = self.plan
        self.log(
            f"blackhole route {p.subnet}, namespace {self.ns}, bridge {p.bridge} {p.server_ip}"
        )
        self.rec.add("route", subnet=p.subnet)  # FIRST: a mistake in the host ns goes nowhere
        run("ip", "route", "add", "blackhole", p.subnet, check=True)
        self.rec.add("netns", name=self.ns)
        run("ip", "netns", "add", self.ns, check=True)
        self.nsrun("ip", "link", "set", "lo", "up")
        self.nsrun("ip", "link", "add", p.bridge, "type", "bridge")
        self.nsrun("ip", "addr", "add", f"{p.server_ip}/{p.prefixlen}", "dev", p.bridge)
        self.nsrun("ip", "link", "set", p.bridge, "up")

    def libvirt(self) -> None:
        if (
            Path("/run/libvirt/libvirt-sock").exists()
            and run("virsh", "-c", "qemu:///system", "version").returncode == 0
        ):
            raise LabError(
                "a libvirtd already runs on this host (another lab? `bronze lab down`): "
                "the lab needs its own, inside its namespace"
            )
        self.log("virtlogd + libvirtd inside the namespace")
        # torn down after the daemons stop (records are undone last first)
        self.rec.add("libvirt-paths", roots=list(LIBVIRT_DIRS), existing=existing_paths())
        self.spawn("virtlogd", ["virtlogd"])
        lib = self.spawn("libvirtd", ["libvirtd"])
        wait_for(
            "libvirtd",
            lambda: alive(lib) and run("virsh", "-c", "qemu:///system", "version").returncode == 0,
            30,
            Path(lib["log"]),
        )

    def domains(self) -> None:
        for vm in self.plan.vms:
            self.log(
                f"VM {vm.name} {vm.mac} ({vm.firmware}, {self.plan.memory_mib} MiB, "
                f"{self.plan.disk_gib} GiB disk)"
            )
            run(
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                vm.disk,
                f"{self.plan.disk_gib}G",
                check=True,
            )
            xml = self.dir / f"{vm.name}.xml"
            xml.write_text(cfg.domain_xml(self.plan, vm))
            self.rec.add("domain", name=vm.name)
            run("virsh", "-c", "qemu:///system", "define", str(xml), check=True)

    def bmcs(self, venv: Path, password: str) -> None:
        # the password goes through stdin, never argv
        proc = subprocess.run(  # noqa: S603
            [str(venv / "bin" / "python"), "-c", HASH_PY],
            input=password + "\n",
            capture_output=True,
            text=True,
            check=True,
        )
        htpasswd = self.secret_file("redfish.htpasswd", f"{cfg.BMC_USER}:{proc.stdout.strip()}\n")
        for vm in self.plan.vms:
            conf = self.dir / f"sushy-{vm.name}.conf"
            state = self.dir / f"sushy-{vm.name}"
            state.mkdir(exist_ok=True)
            conf.write_text(cfg.sushy_config(vm, htpasswd, state))
            self.spawn(
                f"redfish-{vm.name}",
                [
                    str(venv / "bin" / "sushy-emulator"),
                    "--config",
                    str(conf),
                    "-i",
                    "127.0.0.1",
                    "-p",
                    str(vm.redfish_port),
                ],
            )
        ipmi = [vm for vm in self.plan.vms if vm.ipmi_port]
        vbmc = None
        if ipmi:
            vdir = self.dir / "vbmc"
            vdir.mkdir(exist_ok=True)
            for vm in ipmi:
                (vdir / vm.name).mkdir(exist_ok=True)
                os.chmod(
                    self.secret_file(
                        f"vbmc/{vm.name}/config", cfg.vbmc_domain_config(vm, password)
                    ),
                    0o600,
                )
            conf = self.dir / "virtualbmc.conf"
            conf.write_text(
                cfg.vbmc_daemon_config(vdir, self.dir / "vbmcd.pid", self.dir / "vbmcd-own.log")
            )
            env = {**os.environ, "VIRTUALBMC_CONFIG": str(conf)}
            vbmc = self.spawn("vbmcd", [str(venv / "bin" / "vbmcd"), "--foreground"], env=env)
        for vm in self.plan.vms:
            wait_for(
                f"Redfish BMC of {vm.name} (127.0.0.1:{vm.redfish_port} in {self.ns})",
                functools.partial(self.redfish_ok, vm, password),
                60,
                self.dir / f"redfish-{vm.name}.log",
            )
        for vm in ipmi:
            wait_for(
                f"IPMI BMC of {vm.name} (127.0.0.1:{vm.ipmi_port} in {self.ns})",
                functools.partial(self.ipmi_ok, vm),
                60,
                Path(vbmc["log"]) if vbmc else None,
            )

    def http_ok(self, url: str, auth: tuple[str, str] | None = None) -> bool:
        """GET ``url`` from inside the namespace (credentials never on a command line)."""
        return in_netns(self.ns, lambda: httpx.get(url, auth=auth, timeout=5).status_code == 200)

    def redfish_ok(self, vm: cfg.Vm, password: str) -> bool:
        url = f"http://127.0.0.1:{vm.redfish_port}/redfish/v1/Systems/{vm.uuid}"
        return self.http_ok(url, (cfg.BMC_USER, password))

    def ipmi_ok(self, vm: cfg.Vm) -> bool:
        """``ipmitool power status`` through VirtualBMC (password from a file: -f)."""
        res = run(
            "ip", "netns", "exec", self.ns, "ipmitool", "-I", "lanplus", "-C", "3",
            "-H", "127.0.0.1", "-p", str(vm.ipmi_port), "-U", cfg.BMC_USER,
            "-f", str(self.dir / "bmc.password"), "-N", "1", "-R", "1", "power", "status",
        )  # fmt: skip
        return res.returncode == 0

    def bronze(self) -> Path:
        p = self.plan
        data = self.dir / "bronze"
        pki_cache = self.cache / "pki"
        (data / "pki").mkdir(parents=True, exist_ok=True)
        for f in ("ca.key", "ca.crt"):
            if (pki_cache / f).exists():
                shutil.copy2(pki_cache / f, data / "pki" / f)
        start, end = p.pool()
        ipmi, redfish = cfg.IPMI_BASE_PORT, cfg.REDFISH_BASE_PORT
        ports = f"{ipmi}-{ipmi + 31},{redfish}-{redfish + 31}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRONZE_")}
        env.update(
            {
                "BRONZE_DATA_DIR": str(data),
                "BRONZE_API_HOST": p.server_ip,
                "BRONZE_API_PORT": str(cfg.API_PORT),
                "BRONZE_AGENT_HOST": p.server_ip,
                "BRONZE_AGENT_ENROLL_PORT": str(cfg.ENROLL_PORT),
                "BRONZE_AGENT_SESSION_PORT": str(cfg.SESSION_PORT),
                "BRONZE_BMC_NETWORKS": "127.0.0.0/8",
                "BRONZE_BMC_PORTS": ports,
                "BRONZE_PXE_ENABLED": "true",
                "BRONZE_PXE_MODE": "full",
                "BRONZE_PXE_INTERFACE": p.bridge,
                "BRONZE_PXE_ADDRESS": p.server_ip,
                "BRONZE_PXE_HTTP_BASE_URL": p.api_url,
                "BRONZE_PXE_POOL_START": start,
                "BRONZE_PXE_POOL_END": end,
                "BRONZE_PXE_TFTP_ROOT": "/usr/lib/ipxe",
                "BRONZE_PXE_STATE_DIR": str(self.dir / "pxe"),
                "BRONZE_LOG_LEVEL": "info",
            }
        )
        self.log(
            f"bronze serve in the namespace: {p.api_url}, "
            f"agent API {p.server_ip}:{cfg.ENROLL_PORT}/{cfg.SESSION_PORT}"
        )
        self.spawn("ra", [sys.executable, "-m", "server.lab.ra", p.bridge])
        rec = self.spawn(
            "bronze", [str(Path(sys.executable).with_name("bronze")), "serve"], env=env
        )
        wait_for(
            "bronze serve",
            lambda: alive(rec) and self.http_ok(p.api_url + "/healthz"),
            90,
            Path(rec["log"]),
        )
        wait_for("the admin token", lambda: (data / "admin.token").exists(), 10, Path(rec["log"]))
        if not (pki_cache / "ca.crt").exists():
            pki_cache.mkdir(parents=True, exist_ok=True, mode=0o700)
            for f in ("ca.key", "ca.crt"):
                shutil.copy2(data / "pki" / f, pki_cache / f)
        return data / "admin.token"

    def image(self, api: Api) -> None:
        """Built in the host namespace (debootstrap and pip need the mirror and package index,
        which the lab cannot reach), uploaded from inside it through the REST API, as
        ``bronze images build --upload`` does: two assets, then the image."""
        from agent.image.build import BuildError, BuildRequest, build_image
        from agent.image.cpio import CpioError
        from agent.image.debian import DebianError
        from agent.image.modules import ModuleError

        self.log("building (or reusing) the node OS image (agent.image, cached by its inputs)")
        req = BuildRequest(
            repo=repo_root(), ca=self.cache / "pki" / "ca.crt", cache_dir=IMAGE_CACHE
        )
        try:
            result = build_image(req, log=lambda m: self.log(f"  {m}"))
        except (BuildError, CpioError, DebianError, ModuleError) as exc:
            raise LabError(f"image build: {exc}") from None
        version = result.key[:12]
        size = sum(result.sizes.values()) / (1 << 20)
        self.log(f"image {version} ({'cached' if result.cached else 'built'}, {size:.1f} MiB)")
        assets = []
        for path in (result.kernel, result.initrd):
            name = f"{IMAGE_NAME}-{version}-{path.name}"
            self.log(f"uploading {name}")
            with path.open("rb") as fh:
                api(
                    "PUT",
                    f"/api/v1/assets/{name}",
                    params={"sha256": result.sha256[path.name]},
                    content=fh.read(),
                    timeout=300,
                )
            assets.append(name)
        api("POST", "/api/v1/images", json={
            "name": IMAGE_NAME, "version": version, "kernel": assets[0],
            "initrds": assets[1:], "args": list(result.args),
        })  # fmt: skip
        self.rec.data["image"] = {"version": version, "bytes": sum(result.sizes.values())}
        self.rec.save()

    def register(self, api: Api, password: str, with_image: bool) -> None:
        p = self.plan
        if with_image:
            api("POST", "/api/v1/profiles", json={
                "name": "lab", "selector": f"lab={p.name}", "image": IMAGE_NAME,
                "args": [], "agent": True,
            })  # fmt: skip
        for vm in p.vms:
            if vm.ipmi_port:
                bmc = {"driver": "ipmi", "address": "127.0.0.1", "port": vm.ipmi_port}
            else:
                bmc = {
                    "driver": "redfish",
                    "address": "127.0.0.1",
                    "port": vm.redfish_port,
                    "scheme": "http",
                }
            bmc.update({"username": cfg.BMC_USER, "password": password})
            self.log(f"registering {vm.name} ({bmc['driver']} BMC 127.0.0.1:{bmc['port']})")
            api("POST", "/api/v1/machines", json={
                "name": vm.name, "uuid": vm.uuid, "nics": [{"mac": vm.mac}],
                "labels": {"lab": p.name}, "bmc": bmc, "boot_from": "network",
            })  # fmt: skip


def up(plan: cfg.Plan, *, image: bool, log: Log, cache: Path = CACHE) -> dict[str, Any]:
    missing = missing_tools(plan.firmware)
    if missing:
        raise LabError(
            "missing: " + "; ".join(missing) + ". Run scripts/install-system-deps.sh (as root)."
        )
    if os.geteuid() != 0:
        raise LabError("bronze lab needs root (namespaces, routes, libvirtd)")
    state_dir = Path(plan.state_dir)
    records = Records(state_dir)
    if records.exists():
        raise LabError(
            f"{state_dir / 'state.json'} exists: a lab is up, or a crashed one left things "
            "behind. Run `bronze lab down` first."
        )
    if Path(f"/run/netns/{plan.netns}").exists():
        raise LabError(f"namespace {plan.netns} exists and is not this lab's: pick another --name")
    venv = ensure_venv(cache, log)  # before anything is created: it may take a while once
    t0 = time.monotonic()
    records.data["plan"] = plan.to_json()
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o755)  # noqa: S103 - QEMU (user libvirt-qemu) opens the disks below it
    records.save()
    u = Up(plan, records, log, cache)
    u.network()
    u.libvirt()
    u.domains()
    password = secrets.token_hex(8)  # IPMI passwords: at most 20 bytes
    u.secret_file("bmc.password", password)
    u.bmcs(venv, password)
    token_file = u.bronze()
    api = Api(plan.netns, plan.api_url, token_file)
    if image:
        u.image(api)
    u.register(api, password, image)
    records.data["status"] = "up"
    records.data["up_seconds"] = round(time.monotonic() - t0, 1)
    records.save()
    log(f"lab {plan.name} up in {records.data['up_seconds']}s")
    return status(state_dir)
