"""The most valuable proof: the real image boots. Builds (or reuses from the shared cache) the
node OS image with the real builder, boots Debian's kernel and the initramfs under QEMU (TCG,
serial console, no network device), and reads ``/init`` and the agent on the console.

Cost, measured (docs/image.md): about 25 s for the boot under TCG with a cached image (10 of
them ``/init`` looking for a NIC this VM does not have); a build with a warm Debian cache adds
about 1.5 min; a cold one downloads from the Debian mirror apt is
configured with (the only network this test uses).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from agent.image.build import BuildRequest, build_image

CACHE = Path("/var/cache/bronze-image")
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.qemu


def _ca(tmp_path: Path) -> Path:
    """A fixed CA file: a new one per run would change the image key every run."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nbronze qemu test CA\n-----END CERTIFICATE-----\n")
    return ca


@pytest.mark.timeout(900)
def test_image_boots_to_the_agent_and_powers_off(tmp_path: Path) -> None:
    image = build_image(BuildRequest(repo=REPO, ca=_ca(tmp_path), cache_dir=CACHE), log=print)
    proc = subprocess.run(
        [
            "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-m", "1024", "-smp", "1",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd),
            "-append", "console=ttyS0 quiet panic=-1 bronze.init_exit=poweroff",
            "-nographic", "-nic", "none", "-no-reboot", "-serial", "stdio", "-monitor", "none",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    console = proc.stdout.replace("\r", "")
    assert proc.returncode == 0, console[-3000:]
    # each line as printed, without what precedes it (SeaBIOS leaves terminal escapes) and
    # without /init's uptime stamp
    lines = [
        re.sub(r"^bronze init: \[[0-9.]+\] ", "bronze init: ", line[line.find("bronze") :])
        for line in console.splitlines()
        if "bronze" in line
    ]
    expected = [
        f"bronze init: starting (kernel {image.kernel_version})",
        "bronze init: starting bronze-agent",
        # python3 -m agent.main ran in the image: no bronze.server= on this command line
        "bronze-agent: no server (bronze.server= or --server)",
        "bronze init: bronze-agent exited (status 2)",
        "bronze init: poweroff",
    ]
    got = [line for line in lines if line in expected]
    assert got == expected, console[-3000:]
    # q35 without a NIC: the only device with a driver in the image is the ICH9 AHCI controller
    loaded = next(line for line in lines if line.startswith("bronze init: modules loaded: "))
    assert loaded.endswith(" ahci )") and " virtio_net " not in loaded, loaded
    assert "module " not in "\n".join(lines), console[-3000:]  # no insmod failed
