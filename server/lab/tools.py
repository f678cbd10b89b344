"""What ``bronze lab`` needs on the host: programs (each named with its Debian package), the
source tree, and the venv with the BMC emulators."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from server.lab import config as cfg
from server.lab.state import run

Log = Callable[[str], None]

VENV_PACKAGES = ("sushy-tools", "virtualbmc")
# program -> the Debian package that has it (scripts/install-system-deps.sh installs them all)
TOOLS = {
    "ip": "iproute2",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "libvirtd": "libvirt-daemon-system",
    "virtlogd": "libvirt-daemon-system",
    "virsh": "libvirt-clients",
    "ipmitool": "ipmitool",
    "curl": "curl",
    "debootstrap": "debootstrap",
    "zstd": "zstd",
    "cpio": "cpio",
}


class LabError(Exception):
    """A one-line reason ``bronze lab`` prints instead of a traceback."""


def missing_tools(firmware: str) -> list[str]:
    """What is missing, each naming the Debian package that provides it."""
    out = [f"{t} (Debian package {p})" for t, p in TOOLS.items() if shutil.which(t) is None]
    probe = (
        run("/usr/bin/python3", "-c", "import libvirt")
        if Path("/usr/bin/python3").exists()
        else None
    )
    if probe is None or probe.returncode != 0:
        out.append("python3 module libvirt (Debian package python3-libvirt)")
    if not Path("/usr/lib/ipxe/qemu/efi-virtio.rom").exists():
        out.append("QEMU's iPXE ROM /usr/lib/ipxe/qemu/efi-virtio.rom (Debian package ipxe-qemu)")
    if firmware in ("uefi", "mixed") and not cfg.OVMF_CODE.exists():
        out.append(f"{cfg.OVMF_CODE} (Debian package ovmf)")
    if not Path("/usr/lib/ipxe/snponly.efi").exists():
        out.append("/usr/lib/ipxe/snponly.efi (Debian package ipxe)")
    return out


def repo_root() -> Path:
    """The bronze source tree (the image builder packs the agent from it)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").exists():
        raise LabError(
            f"bronze's source tree not found at {root}: the lab builds the image from it"
        )
    return root


def ensure_venv(cache: Path, log: Log) -> Path:
    """sushy-emulator + VirtualBMC in a venv made from Debian's python3 with its site packages
    (the libvirt driver needs Debian's python3-libvirt; pip's libvirt-python does not build
    here). Installed from the package index pip is configured with, once; cached in CACHE/venv."""
    venv = cache / "venv"
    if (venv / "bin" / "sushy-emulator").exists() and (venv / "bin" / "vbmcd").exists():
        return venv
    log(f"creating {venv} (pip install {' '.join(VENV_PACKAGES)}; once)")
    cache.mkdir(parents=True, exist_ok=True)
    res = run("/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv))
    if res.returncode != 0:
        raise LabError(f"cannot create {venv}: {res.stderr.strip()} (Debian package python3-venv)")
    res = run(str(venv / "bin" / "pip"), "install", "-q", *VENV_PACKAGES, timeout=600)
    if res.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        tail = res.stderr.strip().splitlines()[-1:] or [""]
        raise LabError(f"pip install {' '.join(VENV_PACKAGES)} failed: {tail[0]}")
    return venv
