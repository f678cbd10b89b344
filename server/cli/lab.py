"""``bronze lab up|status|down``: a virtual rack on this host (server/lab/, docs/lab.md).

Acts on this host (as ``serve``/``pxe`` do), as root. Progress goes to stderr, one line per step;
``-o json`` prints only the final JSON document on stdout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from server.cli.common import (
    Col,
    OutOpt,
    Output,
    emit_json,
    err_console,
    fail,
    out_console,
    render_table,
)
from server.lab import config as cfg
from server.lab.state import Records, status, teardown
from server.lab.up import LabError, up

app = typer.Typer(no_args_is_help=True, help="A virtual rack on this host: VMs, BMCs, boot plane.")
DEFAULT_DIR = Path(os.environ.get("BRONZE_LAB_DIR", "/var/lib/bronze-lab"))
DirOpt = Annotated[
    Path, typer.Option("--state-dir", help="The lab's records and files (or BRONZE_LAB_DIR).")
]


def _progress(output: Output):  # type: ignore[no-untyped-def]
    def log(message: str) -> None:
        if output is not Output.json:
            err_console().print(
                f"lab: {message}", soft_wrap=True, highlight=False, emoji=False, markup=False
            )

    return log


def _show(data: dict[str, Any], output: Output) -> None:
    if output is Output.json:
        emit_json(data)
        return
    con = out_console()
    if data.get("status") == "down":
        con.print(f"no lab ({data['state_dir']})")
        return
    for key in (
        "status",
        "name",
        "netns",
        "subnet",
        "firmware",
        "api_url",
        "token_file",
        "state_dir",
    ):
        con.print(
            f"{key}: {data.get(key)}", soft_wrap=True, highlight=False, emoji=False, markup=False
        )
    render_table(
        data.get("machines", []),
        [
            Col("NAME", lambda r: r["name"], key=True),
            Col("MAC", lambda r: r["mac"], key=True),
            Col("STATE", lambda r: r["state"]),
            Col("REDFISH", lambda r: r["redfish"], key=True),
            Col("IPMI", lambda r: r["ipmi"] or "-", key=True),
        ],
        con,
    )
    down = [p for p in data.get("processes", []) if not p["running"]]
    if down:
        con.print("not running: " + ", ".join(str(p["role"]) for p in down))


@app.command("up")
def up_cmd(
    machines: Annotated[int, typer.Option("--machines", help="Number of VMs.")] = 2,
    firmware: Annotated[
        str,
        typer.Option(
            "--firmware", help="bios (SeaBIOS + iPXE), uefi (OVMF) or mixed (odd VMs UEFI)."
        ),
    ] = "bios",
    ipmi: Annotated[
        int, typer.Option("--ipmi", help="How many VMs are registered with an IPMI BMC.")
    ] = 1,
    name: Annotated[str, typer.Option("--name", help="Namespace and VM name prefix.")] = "bzlab",
    subnet: Annotated[
        str, typer.Option("--subnet", help="The lab network (blackholed on the host).")
    ] = "10.98.0.0/24",
    memory: Annotated[int, typer.Option("--memory", help="MiB per VM.")] = 1024,
    disk: Annotated[int, typer.Option("--disk", help="GiB per VM disk (qcow2, sparse).")] = 4,
    image: Annotated[
        bool,
        typer.Option(
            "--image/--no-image", help="Build + upload the OS image and an agent profile."
        ),
    ] = True,
    state_dir: DirOpt = DEFAULT_DIR,
    output: OutOpt = Output.table,
) -> None:
    """Create the lab: namespace, bridge, libvirtd, VMs, BMCs, bronze serve; register the VMs."""
    try:
        plan = cfg.make_plan(
            name=name, subnet=subnet, machines=machines, firmware=firmware, ipmi=ipmi,
            memory_mib=memory, disk_gib=disk, state_dir=state_dir,
        )  # fmt: skip
    except ValueError as exc:
        fail(str(exc))
    log = _progress(output)
    try:
        data = up(plan, image=image, log=log)
    except (LabError, RuntimeError, OSError) as exc:
        fail(f"{exc}\n(what was created is recorded in {state_dir}: `bronze lab down` removes it)")
    _show(data, output)


@app.command("status")
def status_cmd(state_dir: DirOpt = DEFAULT_DIR, output: OutOpt = Output.table) -> None:
    """Show the lab: its VMs, BMC addresses, processes and the API URL."""
    _show(status(state_dir), output)


@app.command("down")
def down_cmd(state_dir: DirOpt = DEFAULT_DIR, output: OutOpt = Output.table) -> None:
    """Remove every VM, process, link, route and file the lab made (also after a crashed up)."""
    records = Records(state_dir)
    if not records.exists():
        if output is Output.json:
            emit_json({"status": "down", "removed": 0})
        else:
            out_console().print(f"no lab ({state_dir})")
        return
    n = len(records.resources)
    problems = teardown(records, _progress(output))
    if problems:
        fail("left behind: " + "; ".join(problems))
    if output is Output.json:
        emit_json({"status": "down", "removed": n})
    else:
        out_console().print(f"lab down ({n} records removed)")
