"""Many simulated machines in one process: ``bronze-agent simulate``.

Each simulated machine is a full :class:`~agent.client.Agent` with its own sandbox root (a copy
of ``--root-template`` made of hard links, so it costs directory entries, not data: every write
the agent does is a rename, which never touches the shared inodes), its own identity and
bootstrap token (written into its ``/proc/cmdline``), its own key and certificate, and its own
TCP+mTLS connection (``grpc.use_local_subchannel_pool``). A ``Reboot`` command writes a new boot
id and restarts that machine's session, as a real reboot would.

Tokens come from ``--tokens FILE``: a JSON object ``{"machine-id": "token", ...}``.
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

from agent.client import Agent, AgentOptions
from agent.identity import write_file
from agent.inventory import Inventory, Nic, collect

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
) -> list[Agent]:
    ids = sorted(tokens)[:count]
    base = collect(template)
    agents = []
    for mid in ids:
        root = work / mid / "root"
        make_root(template, root)
        cmdline = (
            f"console=ttyS0 bronze.machine={mid} bronze.token={tokens[mid]} "
            f"bronze.server={server} bronze.enroll={enroll}\n"
        )
        write_file(root / "proc/cmdline", cmdline.encode(), 0o444, fsync=False)
        write_file(
            root / "proc/sys/kernel/random/boot_id", f"{uuid.uuid4()}\n".encode(), fsync=False
        )
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
                    fsync=fsync,
                    inventory=machine_inventory(base, mid),
                )
            )
        )

    async def start(i: int, a: Agent) -> None:
        await asyncio.sleep(ramp_seconds * i / max(1, len(agents)))
        await a.run(stop)

    tasks = [asyncio.create_task(start(i, a)) for i, a in enumerate(agents)]
    log.warning("simulating %d machines", len(agents))
    await asyncio.gather(*tasks, return_exceptions=True)
    return agents


def load_tokens(path: Path) -> dict[str, str]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError("tokens file must hold a JSON object")
    return {str(k): str(v) for k, v in data.items()}
