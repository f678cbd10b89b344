"""The agent commands a rollout writes (in the same transaction as the step that needs them)."""

from __future__ import annotations

from agent.gen import agent_pb2 as pb
from server.boot import images
from server.inventory.models import Image
from server.rollouts.models import Rollout

BOOT_TRIES = 1
"""Boots of a new slot before the bootloader falls back: one, so the next reset after a failed
first boot (the BMC's cycle, or the agent's own watchdog reboot) lands on the last good slot."""


def upgrade_command(r: Rollout, image: Image, asset_base_url: str) -> pb.Command:
    m = images.manifest_of(image)
    base = asset_base_url.rstrip("/")
    return pb.Command(
        upgrade=pb.Upgrade(
            manifest_json=m.canonical().decode(),
            signature=image.signature or "",
            urls=[f"{base}/assets/{f.file}" for f in m.files],
            preserve=bool(r.spec["preserve"]),
            tries=BOOT_TRIES,
            confirm_timeout_seconds=int(r.spec["health_timeout_seconds"]),
        )
    )
