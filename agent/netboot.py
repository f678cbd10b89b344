"""A simulated diskless machine's firmware: each boot fetches its iPXE script from the server and
boots what the script names, as iPXE would (``bronze-agent simulate --netboot URL``).

The script's ``kernel`` line gives the kernel command line, so the image the server serves
(``bronze.image=DIGEST``, and the image's own args such as ``bronze.sim=``) is what the booted
agent sees in ``/proc/cmdline`` and reports in ``Hello``: a netboot upgrade is proven through the
real boot plane, not told to the simulator. A script without a kernel (``exit``: nothing to
boot) leaves the machine without an OS: its agent does not come up until the next reset.
"""

from __future__ import annotations

import asyncio
import logging
import shlex

log = logging.getLogger(__name__)

KEEP = ("bronze.machine=", "bronze.token=", "bronze.server=", "bronze.enroll=", "bronze.ca=")
"""Enrollment parameters of the first boot, kept when a later script carries none (it hands a
token only to the address DHCP gave the MAC; a simulated machine has no DHCP lease)."""


def kernel_args(script: str) -> list[str] | None:
    """The arguments of the script's ``kernel`` line (without the kernel URL and iPXE's
    ``--name``), or None when the script boots no kernel."""
    for line in script.splitlines():
        words = line.split()
        if not words or words[0] != "kernel":
            continue
        words = words[1:]
        if words[:2] == ["--name", "kernel"]:
            words = words[2:]
        return words[1:]
    return None


def next_cmdline(previous: str, args: list[str]) -> str:
    """The command line of a boot with ``args``: enrollment parameters the script lacks are
    carried over from the previous boot."""
    given = {a.split("=", 1)[0] + "=" for a in args}
    kept = [
        w
        for w in shlex.split(previous)
        if w.startswith(KEEP) and w.split("=")[0] + "=" not in given
    ]
    return " ".join([*args, *kept])


async def fetch_script(base_url: str, mac: str, attempts: int = 30) -> str | None:
    """The machine's iPXE script; None when the server never answered (like firmware that gives
    up and moves to its next boot device)."""
    import httpx  # noqa: PLC0415 - only simulated machines fetch scripts: keep it off boot

    url = f"{base_url.rstrip('/')}/boot.ipxe"
    async with httpx.AsyncClient(timeout=10) as client:
        for attempt in range(attempts):
            try:
                r = await client.get(url, params={"mac": mac})
                if r.status_code == 200:
                    return r.text
                log.warning("boot script refused mac=%s status=%s", mac, r.status_code)
            except httpx.HTTPError as exc:
                log.info("boot script fetch failed mac=%s error=%s", mac, exc)
            await asyncio.sleep(min(1.0, 0.1 * (attempt + 1)))
    return None
