"""``bronze machines``: the inventory (create, list, show, update, delete) and a machine's
history (``events``: the audit trail; ``timeline``: its network-boot steps)."""

from __future__ import annotations

import os
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
    fail,
    fetch_all,
    show,
)

app = typer.Typer(no_args_is_help=True, help="Machine inventory.")


def bmc_label(bmc: dict[str, Any] | None) -> str | None:
    """``driver://address[:port]`` (IPv6 in brackets), the whole endpoint in one cell."""
    if not bmc:
        return None
    host = f"[{bmc['address']}]" if ":" in bmc["address"] else bmc["address"]
    port = f":{bmc['port']}" if bmc.get("port") else ""
    return f"{bmc['driver']}://{host}{port}"


MACHINE_COLUMNS = [
    Col("NAME", lambda m: m["name"], key=True),
    Col("PHASE", lambda m: m["phase"]),
    Col("POWER", lambda m: m["power"]["observed"]),
    Col("MACS", lambda m: "\n".join(n["mac"] for n in m["nics"]), key=True),
    Col("BMC", lambda m: bmc_label(m["bmc"]), key=True),
    Col("LABELS", lambda m: ",".join(f"{k}={v}" for k, v in m["labels"].items()), priority=1),
]
EVENT_COLUMNS = [
    Col("TIME", lambda e: e["created_at"], key=True),
    Col("MACHINE", lambda e: e["machine_name"], key=True),
    Col("KIND", lambda e: e["kind"]),
    Col("ACTOR", lambda e: e["actor"], priority=1),
    Col("MESSAGE", lambda e: e["message"]),
]
TIMELINE_COLUMNS = [
    Col("TIME", lambda e: e["at"], key=True),
    Col("MAC", lambda e: e["mac"] or "-", key=True),
    Col("STEP", lambda e: e["kind"]),
    Col("CLIENT", lambda e: e["client"], priority=1),
    Col("DETAIL", lambda e: " ".join(f"{k}={v}" for k, v in e["detail"].items() if v is not None)),
]

Selector = Annotated[
    str | None, typer.Option("-l", "--selector", help="Label selector: rack=r1,role in (a,b),!x")
]


def labels_of(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"label {item!r} must be KEY=VALUE")
        labels[key] = value
    return labels


def bmc_of(
    driver: str | None,
    address: str | None,
    username: str | None,
    password_file: str | None,
    insecure: bool,
) -> dict[str, Any] | None:
    if address is None:
        return None
    bmc: dict[str, Any] = {
        "driver": driver or "auto",
        "address": address,
        "username": username,
        "verify_tls": not insecure,
    }
    password = os.environ.get("BRONZE_BMC_PASSWORD")
    if password_file:
        try:
            with open(password_file) as fh:
                password = fh.read().rstrip("\n")
        except OSError as exc:
            fail(f"cannot read {password_file}: {exc.strerror}")
    if password is not None:
        bmc["password"] = password
    return bmc


def nic_of(spec: str) -> dict[str, str]:
    """``MAC`` or ``MAC@IP``; the server validates both."""
    mac, sep, ip = spec.partition("@")
    return {"mac": mac, "ip": ip} if sep else {"mac": mac}


BootFromOpt = Annotated[
    str | None,
    typer.Option(
        "--boot-from",
        help="disk (boots its installed disk once ready) or network (diskless: always netboots"
        " its image).",
    ),
]


@app.command("list")
def machines_list(
    selector: Selector = None,
    phase: Annotated[str | None, typer.Option("--phase", help="Only this phase.")] = None,
    sort: Annotated[
        str, typer.Option("--sort", help="name, created_at, updated_at, phase; '-' = desc")
    ] = "name",
    limit: Annotated[
        int | None, typer.Option("--limit", help="Stop after N machines (default: all).")
    ] = None,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """List machines, filtered by label selector and phase."""
    params = {"selector": selector, "phase": phase, "sort": sort, "limit": min(limit or 500, 500)}
    show(
        fetch_all(client(url, token_file), "/api/v1/machines", params, limit),
        output,
        MACHINE_COLUMNS,
    )


@app.command("show")
def machines_show(
    name: Annotated[str, typer.Argument(help="Machine name or id.")],
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.json,
) -> None:
    """Show one machine (JSON by default)."""
    show(call(client(url, token_file), "GET", f"/api/v1/machines/{name}"), output, MACHINE_COLUMNS)


BmcDriver = Annotated[str | None, typer.Option("--bmc-driver", help="redfish, ipmi, auto")]
BmcAddress = Annotated[str | None, typer.Option("--bmc-address", help="host[:port]")]
BmcUser = Annotated[str | None, typer.Option("--bmc-username", help="BMC user name.")]
BmcPasswordFile = Annotated[
    str | None,
    typer.Option(
        "--bmc-password-file", help="File with the BMC password (or BRONZE_BMC_PASSWORD)."
    ),
]
BmcInsecure = Annotated[
    bool, typer.Option("--bmc-insecure", help="Do not verify BMC TLS (audited).")
]


@app.command("create")
def machines_create(
    name: Annotated[str, typer.Argument(help="Machine name (DNS label).")],
    mac: Annotated[
        list[str],
        typer.Option(
            "--mac", help="NIC as MAC or MAC@IP (reserved provisioning address); repeat for more."
        ),
    ],
    uuid: Annotated[str | None, typer.Option("--uuid", help="SMBIOS UUID.")] = None,
    serial: Annotated[str | None, typer.Option("--serial", help="Serial number.")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="KEY=VALUE (repeat).")] = None,
    bmc_driver: BmcDriver = None,
    bmc_address: BmcAddress = None,
    bmc_username: BmcUser = None,
    bmc_password_file: BmcPasswordFile = None,
    bmc_insecure: BmcInsecure = False,
    boot_from: BootFromOpt = None,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Register a machine: its NICs, labels and BMC."""
    body: dict[str, Any] = {
        "name": name,
        "nics": [nic_of(m) for m in mac],
        "labels": labels_of(label or []),
    }
    if uuid:
        body["uuid"] = uuid
    if serial:
        body["serial"] = serial
    if boot_from:
        body["boot_from"] = boot_from
    bmc = bmc_of(bmc_driver, bmc_address, bmc_username, bmc_password_file, bmc_insecure)
    if bmc:
        body["bmc"] = bmc
    show(
        call(client(url, token_file), "POST", "/api/v1/machines", json=body),
        output,
        MACHINE_COLUMNS,
    )


@app.command("update")
def machines_update(
    name: Annotated[str, typer.Argument(help="Machine name or id.")],
    label: Annotated[
        list[str] | None, typer.Option("--label", help="Set KEY=VALUE (repeat).")
    ] = None,
    remove_label: Annotated[
        list[str] | None, typer.Option("--remove-label", help="Remove KEY.")
    ] = None,
    phase: Annotated[str | None, typer.Option("--phase", help="Set the phase.")] = None,
    new_name: Annotated[str | None, typer.Option("--rename", help="New name.")] = None,
    mac: Annotated[
        list[str] | None, typer.Option("--mac", help="Replace the NIC list (MAC or MAC@IP).")
    ] = None,
    bmc_driver: BmcDriver = None,
    bmc_address: BmcAddress = None,
    bmc_username: BmcUser = None,
    bmc_password_file: BmcPasswordFile = None,
    bmc_insecure: BmcInsecure = False,
    boot_from: BootFromOpt = None,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Change a machine's labels, phase, name, NICs, BMC or how it boots."""
    body: dict[str, Any] = {}
    labels: dict[str, Any] = {**labels_of(label or []), **{k: None for k in remove_label or []}}
    if labels:
        body["labels"] = labels
    if phase:
        body["phase"] = phase
    if new_name:
        body["name"] = new_name
    if mac:
        body["nics"] = [nic_of(m) for m in mac]
    if boot_from:
        body["boot_from"] = boot_from
    bmc = bmc_of(bmc_driver, bmc_address, bmc_username, bmc_password_file, bmc_insecure)
    if bmc:
        body["bmc"] = bmc
    if not body:
        fail("nothing to update")
    show(
        call(client(url, token_file), "PATCH", f"/api/v1/machines/{name}", json=body),
        output,
        MACHINE_COLUMNS,
    )


@app.command("delete")
def machines_delete(
    name: Annotated[str, typer.Argument(help="Machine name or id.")],
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Delete a machine from the inventory (its events stay)."""
    call(client(url, token_file), "DELETE", f"/api/v1/machines/{name}")
    if output is Output.json:
        show({"deleted": name}, output, [])
    else:
        typer.echo(f"deleted {name}")


@app.command("timeline")
def machines_timeline(
    name: Annotated[
        str, typer.Argument(help="Machine name or id, or a MAC (also unknown machines).")
    ],
    limit: Annotated[int, typer.Option("--limit", help="At most N steps.")] = 200,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Network-boot steps (DHCP, TFTP, script, kernel, initrd) with the machine's provisioning,
    upgrade, enrollment and power events, oldest first: one story from power-on to ready."""
    from server.inventory.validation import normalize_mac

    try:
        path, params = "/api/v1/boot/timeline", {"mac": normalize_mac(name), "limit": limit}
    except ValueError:
        path, params = f"/api/v1/machines/{name}/timeline", {"limit": limit, "events": "true"}
    show(
        call(client(url, token_file), "GET", path, params=params)["items"], output, TIMELINE_COLUMNS
    )


@app.command("events")
def machines_events(
    name: Annotated[str, typer.Argument(help="Machine name or id.")],
    limit: Annotated[int, typer.Option("--limit", help="At most N events.")] = 50,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """A machine's audit trail, newest first."""
    data = call(
        client(url, token_file), "GET", f"/api/v1/machines/{name}/events", params={"limit": limit}
    )
    show(data["items"], output, EVENT_COLUMNS)
