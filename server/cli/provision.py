"""``bronze provision``: take registered machines to installed, configured and ready
(``/api/v1/provisions``, docs/provisioning.md).

``start --watch`` follows the rollout: one line per machine step when not on a terminal, a live
board on one, the JSON document at the end with ``-o json``; it exits 1 unless every machine
reached ``ready``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from server.cli.common import (
    Col,
    OutOpt,
    Output,
    TokenFileOpt,
    UrlOpt,
    call,
    client,
    emit_json,
    show,
)
from server.cli.upgrades import Image, Selector, Timeout, add_controls, add_views, follow

app = typer.Typer(no_args_is_help=True, help="Provision machines: power, netboot, check, install.")

PROVISION_COLUMNS = [
    Col("ID", lambda r: r["id"], key=True),
    Col("STATUS", lambda r: r["status"], key=True),
    Col("KIND", lambda r: r["kind"], key=True),
    Col("IMAGE", lambda r: r["image"] or "-", key=True),
    Col(
        "DISK",
        lambda r: (r["spec"].get("install") or {}).get("disk") or r["spec"].get("disk") or "-",
    ),
    Col("READY", lambda r: f"{r['counts']['succeeded']}/{sum(r['counts'].values())}"),
    Col("FAILED", lambda r: r["counts"]["failed"]),
    Col("SELECTOR", lambda r: r["selector"], priority=1),
    Col("REASON", lambda r: r["reason"] or r.get("waiting_for") or "", priority=2),
]
PLAN_COLUMNS = [
    Col("MACHINE", lambda m: m["name"], key=True),
    Col("BMC", lambda m: "yes" if m["bmc"] else "no (operator powers on)"),
    Col("STEPS", lambda m: " -> ".join(m["steps"]), key=True),
]

Disk = Annotated[
    str | None, typer.Option("--disk", help="Install target (/dev/vda); none: diskless.")
]
Expect = Annotated[
    list[str] | None,
    typer.Option("--expect", help="Hardware check, e.g. 'memory_gib >= 64' (repeat)."),
]
MaxParallel = Annotated[int, typer.Option("--max-parallel", help="Machines in flight at once.")]
Stagger = Annotated[int, typer.Option("--stagger-ms", help="Between power-ons (ms).")]
Retries = Annotated[int, typer.Option("--retries", help="Power attempts after the first.")]
NetbootTimeout = Annotated[
    int, typer.Option("--netboot-timeout", help="Seconds from power-on to agent enrolled.")
]
InstallTimeout = Annotated[int, typer.Option("--install-timeout", help="Seconds to install.")]


def _body(
    image: str,
    selector: str,
    disk: str | None,
    expect: list[str] | None,
    max_parallel: int,
    stagger_ms: int,
    retries: int,
    netboot_timeout: int,
    install_timeout: int,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "image": image,
        "selector": selector,
        "expect": expect or [],
        "max_parallel": max_parallel,
        "stagger_ms": stagger_ms,
        "retries": retries,
        "timeouts": {"netboot_seconds": netboot_timeout, "install_seconds": install_timeout},
    }
    if disk:
        body["install"] = {"disk": disk}
    return body


@app.command("plan")
def plan(
    image: Image,
    selector: Selector,
    disk: Disk = None,
    expect: Expect = None,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Show each selected machine and the steps it will go through; changes nothing."""
    body = _body(image, selector, disk, expect, 10, 0, 2, 300, 1800)
    r = call(
        client(url, token_file), "POST", "/api/v1/provisions", params={"dry_run": "true"}, json=body
    )
    if output is Output.json:
        emit_json(r)
        return
    show(r["machines"], output, PLAN_COLUMNS)


@app.command("start")
def start(
    image: Image,
    selector: Selector,
    disk: Disk = None,
    expect: Expect = None,
    max_parallel: MaxParallel = 10,
    stagger_ms: Stagger = 0,
    retries: Retries = 2,
    netboot_timeout: NetbootTimeout = 300,
    install_timeout: InstallTimeout = 1800,
    watch_: Annotated[bool, typer.Option("--watch", help="Follow it until it ends.")] = False,
    timeout: Timeout = 86_400,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Provision the selected machines with an image (installed to --disk, or netbooted)."""
    body = _body(
        image,
        selector,
        disk,
        expect,
        max_parallel,
        stagger_ms,
        retries,
        netboot_timeout,
        install_timeout,
    )
    cl = client(url, token_file)
    r = call(cl, "POST", "/api/v1/provisions", json=body)
    if not watch_:
        show([r], output, PROVISION_COLUMNS)
        return
    follow(cl, f"/api/v1/provisions/{r['id']}", timeout, output)


add_views(
    app,
    "/api/v1/provisions",
    "provision",
    PROVISION_COLUMNS,
    "Follow a provision until it ends; exit 1 unless every machine is ready.",
)
add_controls(
    app,
    "/api/v1/provisions",
    {
        "pause": "Start no more machines; machines in flight go on.",
        "resume": "Go on after a pause.",
        "cancel": "Start no more machines; in-flight ones finish. Nothing is powered off.",
    },
    PROVISION_COLUMNS,
)


@app.command("deprovision")
def deprovision(
    name: Annotated[str | None, typer.Argument(help="Machine name or id (or --selector).")] = None,
    selector: Annotated[
        str | None, typer.Option("-l", "--selector", help="Every machine it matches.")
    ] = None,
    wipe: Annotated[
        str, typer.Option("--wipe", help="none, quick (signatures, tables) or full (every byte).")
    ] = "quick",
    disk: Annotated[
        str | None, typer.Option("--disk", help="Disk to wipe; default: the installed one.")
    ] = None,
    watch_: Annotated[bool, typer.Option("--watch", help="Follow it until it ends.")] = False,
    timeout: Timeout = 86_400,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Wipe machines' disks through their agents, then back to registered, identity revoked."""
    if (name is None) == (selector is None):
        raise typer.BadParameter("give a machine name or --selector, not both")
    body: dict[str, Any] = {"wipe": wipe}
    if disk:
        body["disk"] = disk
    cl = client(url, token_file)
    if name is not None:
        r = call(cl, "POST", f"/api/v1/machines/{name}/deprovision", json=body)
    else:
        r = call(cl, "POST", "/api/v1/deprovisions", json={**body, "selector": selector})
    if not watch_:
        show([r], output, PROVISION_COLUMNS)
        return
    follow(cl, f"/api/v1/deprovisions/{r['id']}", timeout, output)
