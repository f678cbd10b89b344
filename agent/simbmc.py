"""A simulated machine wired to a Redfish BMC emulator (``simulate --redfish-systems``).

sushy-emulator's fake driver keeps each system's power state in memory and changes it on
``ComputerSystem.Reset``; nothing else happens to a machine. The simulator closes that loop:
it polls the system's ``PowerState`` and treats ``Off -> On`` as this machine powering on
(a power cycle that never reads ``Off`` in between is not seen). The pyghmi IPMI simulator writes
an event log instead (``--power-events``, ``agent.runtime``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx

log = logging.getLogger(__name__)

POLL_SECONDS = 0.3


async def follow_redfish(system_url: str, powered_on: Callable[[], None]) -> None:
    """Until cancelled: call ``powered_on`` whenever the system goes from Off to On."""
    last: str | None = None
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            try:
                state = (await client.get(system_url)).json().get("PowerState")
            except (httpx.HTTPError, ValueError, AttributeError):
                state = None
            if state == "On" and last == "Off":
                log.info("powered on by the Redfish BMC system=%s", system_url)
                powered_on()
            if state in ("On", "Off"):
                last = state
            await asyncio.sleep(POLL_SECONDS)
