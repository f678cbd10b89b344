"""``build_image``: the node OS image (kernel + initramfs + default args) from its inputs.

Steps (each cached, see :mod:`agent.image.cache`): wheels (the bronze wheel built from this
repository with ``pip wheel . --no-deps``, its agent's runtime dependencies at the versions
installed here) -> inputs and key (a finished image with that key is reused) -> Debian root
(``debootstrap``, cached as a tar by mirror+suite+packages) -> kernel ``.deb`` (downloaded once)
-> modules and their per-driver chains -> wheels installed into the root's ``/usr/local``
site-packages, Python pruned and compiled -> unneeded programs and libraries removed ->
``/init``, the DHCP hook, the fleet CA -> compressed cpio.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from agent.image import cpio, debian, libs, python, tools
from agent.image.cache import BuildInputs, base_key, cache_key, file_sha256, wheel_digest
from agent.image.init_script import UDHCPC_SCRIPT, InitConfig, render_init
from agent.image.modules import (
    DISK_MODULES,
    NET_MODULES,
    NIC_MODULES,
    STORAGE_MODULES,
    driver_table,
    load_order,
    read_builtin,
    read_index,
)

AGENT_DEPS: tuple[str, ...] = ("grpcio", "protobuf", "cryptography", "httpx")
"""The agent's runtime dependencies (what ``agent/`` imports); pip adds theirs."""

NOT_AGENT: tuple[str, ...] = ("server", "pxe", "bmc", "migrations")
"""Packages of the bronze wheel the agent never imports (the agent never imports server/)."""

DEFAULT_ARGS: tuple[str, ...] = ("console=tty0", "console=ttyS0,115200n8")
KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initrd.img"


class BuildError(Exception):
    """The build could not finish; the message says which step and why."""


@dataclass(frozen=True)
class BuildRequest:
    repo: Path
    ca: Path
    cache_dir: Path
    args: tuple[str, ...] = DEFAULT_ARGS
    compression: cpio.Compression = cpio.Compression.ZSTD
    use_cache: bool = True
    mirror: debian.Mirror | None = None


@dataclass
class BuildResult:
    key: str
    kernel: Path
    initrd: Path
    kernel_version: str
    args: tuple[str, ...]
    sha256: dict[str, str]
    sizes: dict[str, int]
    seconds: float
    cached: bool
    steps: dict[str, float] = field(default_factory=dict)


def _pip(*args: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "-q", *args], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise BuildError(f"pip {args[0]} failed: {proc.stderr.strip()[-800:]}")


def build_wheels(repo: Path, dest: Path) -> list[Path]:
    """The bronze wheel (reproducible zip timestamps) and the agent's dependency wheels."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(cpio.EPOCH)}
    _pip("wheel", "--no-deps", "-w", str(dest), str(repo), env=env)
    pins = [f"{d}=={version(d)}" for d in AGENT_DEPS]
    _pip("wheel", "-w", str(dest), *pins)
    return sorted(dest.glob("*.whl"))


def _inputs(req: BuildRequest, wheels: list[Path]) -> tuple[BuildInputs, debian.Mirror]:
    mirror = req.mirror or debian.configured_mirror()
    package, kver = debian.resolve_kernel()
    modules = (*NIC_MODULES, *DISK_MODULES, *NET_MODULES, *STORAGE_MODULES)

    def digest(w: Path) -> tuple[str, str]:
        project = w.name.split("-")[0].lower()
        return project, wheel_digest(w, NOT_AGENT if project == "bronze" else ())

    digests = tuple(sorted(digest(w) for w in wheels))
    inputs = BuildInputs(
        mirror=mirror.uri,
        suite=mirror.suite,
        packages=debian.PACKAGES,
        kernel_package=f"{package}={kver}",
        modules=modules,
        wheels=digests,
        ca_sha256=file_sha256(req.ca),
        args=req.args,
        compression=req.compression.value,
        tools=tools.resolve(),
    )
    return inputs, mirror


def _base_root(inputs: BuildInputs, mirror: debian.Mirror, cache: Path, root: Path) -> None:
    tar = cache / "base" / f"{base_key(inputs)}.tar"
    if not tar.exists():
        tmp = cache / "base" / f"tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            debian.debootstrap(tmp, mirror, inputs.packages, cache / "debs")
            subprocess.run(
                ["tar", "--numeric-owner", "-cf", f"{tar}.part", "-C", str(tmp), "."], check=True
            )
            os.replace(f"{tar}.part", tar)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    root.mkdir(parents=True)
    subprocess.run(["tar", "--numeric-owner", "-xf", str(tar), "-C", str(root)], check=True)
    debian.prune(root)


def _add_modules(root: Path, moddir: Path) -> InitConfig:
    """Copy every driver's chain and the support modules; the /init configuration."""
    kver = moddir.name
    index, builtin = read_index(moddir), read_builtin(moddir)
    cfg = InitConfig(
        kernel_version=kver,
        drivers=driver_table((*NIC_MODULES, *DISK_MODULES), index, moddir, builtin=builtin),
        net_modules=load_order(NET_MODULES, index, builtin=builtin),
        storage_modules=load_order(STORAGE_MODULES, index, builtin=builtin),
    )
    every = {*cfg.net_modules, *cfg.storage_modules, *(m for d in cfg.drivers for m in d.chain)}
    dest = root / "lib/modules" / kver
    for rel in sorted(every):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(moddir / rel, dest / rel)
    for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (moddir / name).exists():
            shutil.copy2(moddir / name, dest / name)
    if shutil.which("depmod"):  # modules.dep in the image: busybox modprobe works too
        subprocess.run(["depmod", "-b", str(root), kver], check=True, capture_output=True)
    return cfg


def _install_agent(root: Path, wheels: list[Path], ca: Path) -> None:
    pys = sorted((root / "usr/lib").glob("python3.*"))
    if not pys:
        raise BuildError("the Debian root has no python3")
    site = root / "usr/local/lib" / pys[-1].name / "dist-packages"
    _pip(
        "install",
        "--no-deps",
        "--no-index",
        "--no-compile",
        "--target",
        str(site),
        *map(str, wheels),
    )
    for rel in ("bin", "agent/fixtures", *NOT_AGENT):  # scripts, test trees, server side
        shutil.rmtree(site / rel, ignore_errors=True)
    for record in site.glob("bronze-*.dist-info/RECORD"):
        record.unlink()  # lists every file of the whole wheel; version() needs METADATA only
    _strip(site)
    python.prune_stdlib(root)
    python.compile_all(root, site)
    launcher = root / "usr/local/bin/bronze-agent"
    launcher.parent.mkdir(parents=True, exist_ok=True)
    launcher.write_text('#!/bin/sh\nexec python3 -m agent.main "$@"\n')
    launcher.chmod(0o755)
    (root / "etc/bronze").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca, root / "etc/bronze/ca.pem")


def _strip(site: Path) -> None:
    """Drop the symbol tables of the wheels' extension modules (cryptography's by ~3 MiB)."""
    if shutil.which("strip") is None:
        return
    libs = [str(p) for p in site.rglob("*.so")]
    if libs:
        subprocess.run(["strip", "--strip-unneeded", *libs], check=False, capture_output=True)


def _write_init(root: Path, cfg: InitConfig) -> None:
    init = root / "init"
    init.write_text(render_init(cfg))
    init.chmod(0o755)
    hook = root / "etc/bronze/udhcpc.script"
    hook.write_text(UDHCPC_SCRIPT)
    hook.chmod(0o755)
    (root / "etc/hostname").write_text("bronze-node\n")
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("")


def build_image(req: BuildRequest, log=print) -> BuildResult:  # type: ignore[no-untyped-def]
    """Build (or reuse) the image; the files are in ``cache_dir/images/<key>/``."""
    t0 = time.monotonic()
    steps: dict[str, float] = {}
    cache = req.cache_dir
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix="work-") as tmp:
        work = Path(tmp)
        wheels = build_wheels(req.repo, work / "wheels")
        inputs, mirror = _inputs(req, wheels)
        key = cache_key(inputs)
        steps["wheels"] = time.monotonic() - t0
        final = cache / "images" / key
        if req.use_cache and (final / "image.json").exists():
            log(f"image {key[:12]}: cached")
            return _result(final, time.monotonic() - t0, True, steps)
        log(f"image {key[:12]}: building (kernel {inputs.kernel_package})")
        t = time.monotonic()
        _base_root(inputs, mirror, cache, work / "root")
        steps["root"] = time.monotonic() - t
        t = time.monotonic()
        package, _, kv = inputs.kernel_package.partition("=")
        deb = debian.fetch_deb(package, kv, cache / "debs")
        vmlinuz, moddir = debian.unpack_kernel(deb, work / "kernel")
        init_cfg = _add_modules(work / "root", moddir)
        steps["kernel"] = time.monotonic() - t
        t = time.monotonic()
        try:
            _install_agent(work / "root", wheels, req.ca)
        except python.PythonError as exc:
            raise BuildError(str(exc)) from None
        _write_init(work / "root", init_cfg)
        steps["agent"] = time.monotonic() - t
        t = time.monotonic()
        tools.add_tools(work / "root", inputs.tools, cache / "debs", work)
        steps["tools"] = time.monotonic() - t
        t = time.monotonic()
        try:  # last before packing: whatever the steps above added counts as a user
            libs.replace_with_busybox(work / "root")
            libs.prune_libraries(work / "root")
        except libs.LibsError as exc:
            raise BuildError(str(exc)) from None
        steps["prune"] = time.monotonic() - t
        t = time.monotonic()
        staging = cache / "images" / f"{key}.part"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        cpio.pack(work / "root", staging / INITRD_FILE, req.compression)
        shutil.copyfile(vmlinuz, staging / KERNEL_FILE)
        steps["pack"] = time.monotonic() - t
        _write_record(staging, inputs, key, init_cfg)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
    return _result(final, time.monotonic() - t0, False, steps)


def _write_record(d: Path, inputs: BuildInputs, key: str, cfg: InitConfig) -> None:
    files = {n: {"sha256": file_sha256(d / n), "size": (d / n).stat().st_size}
             for n in (KERNEL_FILE, INITRD_FILE)}  # fmt: skip
    doc = {
        "key": key,
        "kernel_version": cfg.kernel_version,
        "args": list(inputs.args),
        "files": files,
        "drivers": {d.name: list(d.chain) for d in cfg.drivers},
        "modules": {"net": list(cfg.net_modules), "storage": list(cfg.storage_modules)},
        "inputs": json.loads(json.dumps(inputs.__dict__)),
    }
    (d / "image.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def _result(d: Path, seconds: float, cached: bool, steps: dict[str, float]) -> BuildResult:
    doc = json.loads((d / "image.json").read_text())
    return BuildResult(
        key=doc["key"],
        kernel=d / KERNEL_FILE,
        initrd=d / INITRD_FILE,
        kernel_version=doc["kernel_version"],
        args=tuple(doc["args"]),
        sha256={n: f["sha256"] for n, f in doc["files"].items()},
        sizes={n: f["size"] for n, f in doc["files"].items()},
        seconds=seconds,
        cached=cached,
        steps=steps,
    )
