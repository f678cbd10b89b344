"""A simulated machine wired to its simulated BMC: what resets or powers it on.

* the pyghmi IPMI simulator (``simulate --power-events FILE --bmc-ports FILE``) appends
  ``PORT on|cycle|reset`` lines to an event log: a line for this machine's BMC port is a reset;
* sushy-emulator (``simulate --redfish-systems FILE``): its fake driver keeps each system's power
  state in memory and changes it on ``ComputerSystem.Reset``; nothing else happens to a machine.
  The simulator closes that loop: it polls the system's ``PowerState`` and treats ``Off -> On``
  as this machine powering on (a power cycle that never reads ``Off`` in between is not seen).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

POLL_SECONDS = 0.3


async def follow_redfish(system_url: str, powered_on: Callable[[], None]) -> None:
    """Until cancelled: call ``powered_on`` whenever the system goes from Off to On."""
    import httpx  # noqa: PLC0415 - only simulated machines have one: keep it off boot

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


async def follow_event_log(
    path: Path, offset: int | None, port: int, powered_on: Callable[[], None]
) -> None:
    """Until cancelled: call ``powered_on`` for each ``PORT on|cycle|reset`` line of the log
    written after ``offset`` (None: the log's end now)."""
    if offset is None:
        offset = path.stat().st_size if path.exists() else 0
    while True:
        await asyncio.sleep(0.2)
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except OSError:
            continue
        offset += len(data)
        for line in data.decode(errors="replace").splitlines():
            bmc, _, what = line.partition(" ")
            if bmc == str(port) and what in ("cycle", "reset", "on"):
                log.info("power %s from the BMC port=%s", what, port)
                powered_on()
