"""Many simulated machines in one process: ``bronze-agent simulate``.

Each simulated machine is a full :class:`~agent.runtime.Agent` with its own sandbox root (a copy
of ``--root-template`` made of hard links, so it costs directory entries, not data: every write
the agent does is a rename, which never touches the shared inodes), its own identity and
bootstrap token (written into its ``/proc/cmdline``), its own key and certificate, and its own
TCP+mTLS connection (``grpc.use_local_subchannel_pool``). A ``Reboot`` command writes a new boot
id and restarts that machine's session, as a real reboot would.

Tokens come from ``--tokens FILE``: a JSON object ``{"machine-id": "token", ...}``.

Installed machines (``--installed DIR``): each machine gets a sandbox install disk under
``ROOT/system`` (``agent.install.SandboxBackend``: BOOT-A, BOOT-B, STATE, EPHEMERAL as
directories, a real GRUB environment block) with the image of ``DIR/manifest.json`` (a canonical
image manifest, ``agent.image_manifest``) and its files in slot A, so upgrades write real slots
and reboots run the same boot-counting decision as GRUB. ``--power-events FILE --bmc-ports FILE``
wire each machine to a simulated BMC: a ``PORT cycle|reset`` line in the BMC simulator's event
log resets that machine. Diskless machines (``--netboot URL --netboot-macs FILE``) fetch their
boot script from the server at every boot (``agent.netboot``) and run the image it serves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from agent.identity import write_file
from agent.image_manifest import Manifest, TrustedKey
from agent.install import Manifest as SlotManifest
from agent.install import install_sandbox
from agent.inventory import Inventory, Nic, collect
from agent.runtime import Agent, AgentOptions
from agent.upgrade import http_client

log = logging.getLogger(__name__)


def make_root(template: Path, root: Path) -> None:
    if not root.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(template, root, symlinks=True, copy_function=os.link)


def machine_inventory(base: Inventory, machine_id: str) -> Inventory:
    """Give each simulated machine its own SMBIOS UUID, serial and MACs."""
    h = hashlib.sha256(machine_id.encode()).digest()
    nics = tuple(
        dataclasses.replace(n, mac="02:" + ":".join(f"{b:02x}" for b in h[i * 5 : i * 5 + 5]))
        for i, n in enumerate(base.nics)
    )
    smbios = dataclasses.replace(
        base.smbios, uuid=str(uuid.UUID(bytes=h[:16])), serial=f"SIM-{h[:5].hex().upper()}"
    )
    return dataclasses.replace(base, smbios=smbios, nics=tuple[Nic, ...](nics))


def machine_root(template: Path, root: Path, boot_params: str) -> Path:
    """A simulated machine's root, booted: kernel command line (with ``boot_params``) and a
    fresh boot id."""
    make_root(template, root)
    cmdline = f"console=ttyS0 {boot_params}\n"
    write_file(root / "proc/cmdline", cmdline.encode(), 0o444, fsync=False)
    write_file(root / "proc/sys/kernel/random/boot_id", f"{uuid.uuid4()}\n".encode(), fsync=False)
    return root


async def simulate(
    *,
    count: int,
    template: Path,
    work: Path,
    server: str,
    enroll: str,
    ca_pem: bytes,
    tokens: dict[str, str],
    heartbeat_interval: float,
    ramp_seconds: float,
    stop: asyncio.Event,
    fsync: bool = False,
    installed: Path | None = None,
    backoff_max: float = 30.0,
    reboot_seconds: float = 0.0,
    trusted_keys: tuple[TrustedKey, ...] = (),
    power_events: Path | None = None,
    bmc_ports: dict[str, int] | None = None,
    netboot_url: str = "",
    netboot_macs: dict[str, str] | None = None,
    powered_off: bool = False,
    redfish_systems: dict[str, str] | None = None,
) -> list[Agent]:
    ids = sorted(tokens)[:count]
    events_from = power_events.stat().st_size if power_events and power_events.exists() else 0
    base = collect(template)
    agents = []
    for mid in ids:
        boot = f"bronze.machine={mid} bronze.token={tokens[mid]} bronze.server={server}"
        root = machine_root(template, work / mid / "root", f"{boot} bronze.enroll={enroll}")
        if installed is not None and not (root / "system").exists():
            install_image(root / "system", installed)
        agents.append(
            Agent(
                AgentOptions(
                    root=root,
                    state_dir=root / "var/lib/bronze",
                    machine_id=mid,
                    token=tokens[mid],
                    server=server,
                    enroll=enroll,
                    ca_pem=ca_pem,
                    heartbeat_interval=heartbeat_interval,
                    backoff_max=backoff_max,
                    reboot_seconds=reboot_seconds,
                    trusted_keys=trusted_keys,
                    fsync=fsync,
                    inventory=machine_inventory(base, mid),
                    power_events=power_events,
                    power_events_offset=events_from,
                    bmc_port=(bmc_ports or {}).get(mid, 0),
                    netboot_url=netboot_url,
                    netboot_mac=(netboot_macs or {}).get(mid, ""),
                    redfish_system=(redfish_systems or {}).get(mid, ""),
                    powered_off=powered_off
                    and ((bmc_ports or {}).get(mid, 0) != 0 or mid in (redfish_systems or {})),
                )
            )
        )

    async def start(i: int, a: Agent) -> None:
        await asyncio.sleep(ramp_seconds * i / max(1, len(agents)))
        await a.run(stop)

    if installed is not None:  # one import of the HTTP client for the process, before the
        http_client()  # machines start (each real node pays it once, at its first upgrade)
    tasks = [asyncio.create_task(start(i, a)) for i, a in enumerate(agents)]
    log.warning("simulating %d machines", len(agents))
    await asyncio.gather(*tasks, return_exceptions=True)
    return agents


def install_image(system: Path, image_dir: Path) -> None:
    """A sandbox install disk with the image of ``image_dir`` in slot A (last good)."""
    manifest = Manifest.from_canonical((image_dir / "manifest.json").read_text())
    slot = SlotManifest(
        version=manifest.digest(),
        kernel=manifest.kernel.file,
        initrds=tuple(f.file for f in manifest.initrds),
        kernel_args=manifest.args,
        sha256={f.file: f.sha256 for f in manifest.files},
    )
    install_sandbox(system, {f.file: image_dir / f.file for f in manifest.files}, slot)


def load_tokens(path: Path) -> dict[str, str]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError("tokens file must hold a JSON object")
    return {str(k): str(v) for k, v in data.items()}
