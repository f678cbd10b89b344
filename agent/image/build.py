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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

from agent.image import cpio, debian, libs, python, tools
from agent.image.cache import BuildInputs, cache_key, file_sha256, root_key, wheel_digest
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
    """The bronze wheel (reproducible zip timestamps) and the agent's dependency wheels. With
    setuptools at hand the bronze wheel is built without pip's isolated build environment
    (which installs setuptools into a fresh venv first: 12 s against 4 s; same wheel)."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(cpio.EPOCH)}
    isolation = ["--no-build-isolation"] if find_spec("setuptools") else []
    _pip("wheel", "--no-deps", *isolation, "-w", str(dest), str(repo), env=env)
    pins = [f"{d}=={version(d)}" for d in AGENT_DEPS]
    _pip("wheel", "-w", str(dest), *pins)
    return sorted(dest.glob("*.whl"))


def _inputs(req: BuildRequest, mirror: debian.Mirror, wheels: list[Path]) -> BuildInputs:
    package = debian.kernel_package()
    versions = debian.candidates((package, *tools.PACKAGES))
    modules = (*NIC_MODULES, *DISK_MODULES, *NET_MODULES, *STORAGE_MODULES)

    def digest(w: Path) -> tuple[str, str]:
        project = w.name.split("-")[0].lower()
        return project, wheel_digest(w, NOT_AGENT if project == "bronze" else ())

    return BuildInputs(
        mirror=mirror.uri,
        suite=mirror.suite,
        packages=debian.PACKAGES,
        kernel_package=f"{package}={versions[package]}",
        modules=modules,
        wheels=tuple(sorted(digest(w) for w in wheels)),
        ca_sha256=file_sha256(req.ca),
        args=req.args,
        compression=req.compression.value,
        tools=tuple(f"{name}={versions[name]}" for name in tools.PACKAGES),
    )


def _base_tar(mirror: debian.Mirror, cache: Path) -> Path:
    """The Debian root as a tar in the cache: ``debootstrap`` (the slowest step of a build
    without it, ~50 s) only when missing. Runs beside the wheels: it needs the mirror only."""
    tar = cache / "base" / f"{root_key(mirror.uri, mirror.suite, debian.PACKAGES)}.tar"
    if tar.exists():
        return tar
    tmp = cache / "base" / f"tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        debian.debootstrap(tmp, mirror, debian.PACKAGES, cache / "debs")
        subprocess.run(
            ["tar", "--numeric-owner", "-cf", f"{tar}.part", "-C", str(tmp), "."], check=True
        )
        os.replace(f"{tar}.part", tar)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tar


def _unpack_root(tar: Path, root: Path) -> None:
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


class _Steps:
    """Each step's wall time, printed as it ends (the summary repeats them all)."""

    def __init__(self, log) -> None:  # type: ignore[no-untyped-def]
        self.log, self.t = log, time.monotonic()
        self.seconds: dict[str, float] = {}

    def done(self, name: str) -> None:
        """``name`` took the time since the previous step ended."""
        now = time.monotonic()
        self.note(name, now - self.t)
        self.t = now

    def note(self, name: str, seconds: float) -> None:
        """A step that ran beside the others (its time overlaps theirs)."""
        self.seconds[name] = seconds
        self.log(f"  {name}: {seconds:.1f}s")


def _timed(fn, *args):  # type: ignore[no-untyped-def]
    t = time.monotonic()
    return fn(*args), time.monotonic() - t


def build_image(req: BuildRequest, log=print) -> BuildResult:  # type: ignore[no-untyped-def]
    """Build (or reuse) the image; the files are in ``cache_dir/images/<key>/``. The Debian
    root is made (when not cached) while the wheels build, and the kernel and the tool
    packages are unpacked while the root is pruned and the agent installed."""
    t0 = time.monotonic()
    cache = req.cache_dir
    cache.mkdir(parents=True, exist_ok=True)
    mirror = req.mirror or debian.configured_mirror()
    with (  # the pool first out: its unpacks finish before the work dir goes
        tempfile.TemporaryDirectory(dir=cache, prefix="work-") as tmp,
        ThreadPoolExecutor(2) as pool,
    ):
        work, steps = Path(tmp), _Steps(log)
        base = pool.submit(_timed, _base_tar, mirror, cache)
        wheels = build_wheels(req.repo, work / "wheels")
        inputs = _inputs(req, mirror, wheels)
        key = cache_key(inputs)
        steps.done("wheels")
        final = cache / "images" / key
        if req.use_cache and (final / "image.json").exists():
            log(f"image {key[:12]}: cached")
            return _result(final, time.monotonic() - t0, True, steps.seconds)
        log(f"image {key[:12]}: building (kernel {inputs.kernel_package})")
        staging = cache / "images" / f"{key}.part"
        init_cfg = _build(req, inputs, work, (pool, base), steps, staging)
        _write_record(staging, inputs, key, init_cfg)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
    return _result(final, time.monotonic() - t0, False, steps.seconds)


def _unpack_kernel(inputs: BuildInputs, debs: Path, dest: Path) -> tuple[Path, Path]:
    package, _, kv = inputs.kernel_package.partition("=")
    return debian.unpack_kernel(debian.fetch_deb(package, kv, debs), dest)


def _build(
    req: BuildRequest,
    inputs: BuildInputs,
    work: Path,
    jobs: tuple[ThreadPoolExecutor, Future[tuple[Path, float]]],
    steps: _Steps,
    staging: Path,
) -> InitConfig:
    """The root, kernel, agent, tools, pruning and the packed files into ``staging``."""
    pool, base = jobs
    debs, root = req.cache_dir / "debs", work / "root"
    kernel = pool.submit(_unpack_kernel, inputs, debs, work / "kernel")
    tool_tree = pool.submit(tools.unpack, inputs.tools, debs, work / "tools")
    tar, seconds = base.result()
    if seconds > 1:  # it ran (the root was not cached)
        steps.note("debootstrap (beside the wheels)", seconds)
    _unpack_root(tar, root)
    steps.done("root")
    vmlinuz, moddir = kernel.result()
    init_cfg = _add_modules(root, moddir)
    steps.done("kernel")
    try:
        _install_agent(root, wheels=sorted((work / "wheels").glob("*.whl")), ca=req.ca)
    except python.PythonError as exc:
        raise BuildError(str(exc)) from None
    _write_init(root, init_cfg)
    steps.done("agent")
    tools.add_tools(root, tool_tree.result())
    steps.done("tools")
    try:  # last before packing: whatever the steps above added counts as a user
        libs.replace_with_busybox(root)
        libs.prune_libraries(root)
    except libs.LibsError as exc:
        raise BuildError(str(exc)) from None
    steps.done("prune")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    cpio.pack(root, staging / INITRD_FILE, req.compression)
    shutil.copyfile(vmlinuz, staging / KERNEL_FILE)
    steps.done("pack")
    return init_cfg


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
