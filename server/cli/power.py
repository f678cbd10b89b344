"""``bronze power``, ``bronze boot-device`` and ``bronze operations``.

A power or boot-device change is an operation on the server (202 + an id to poll). By default
the CLI waits for it (a progress display on stderr, see :mod:`server.cli.progress`) and exits 1
if any machine failed. ``--no-wait`` prints the accepted operation's id and exits 0: the request
was accepted; ``bronze operations wait ID`` picks it up later.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from server.cli.client import Client
from server.cli.common import (
    Col,
    OutOpt,
    Output,
    TokenFileOpt,
    UrlOpt,
    call,
    client,
    emit_json,
    fail,
    fetch_all,
    show,
)
from server.cli.progress import wait_ops

boot_app = typer.Typer(no_args_is_help=True, help="One-time or persistent boot device.")
ops_app = typer.Typer(no_args_is_help=True, help="Power and boot-device operations.")

ITEM_COLUMNS = [
    Col("MACHINE", lambda i: i["machine"], key=True),
    Col("STATUS", lambda i: i["status"]),
    Col("STATE", lambda i: i["result"].get("state")),
    Col("ATTEMPTS", lambda i: i["result"].get("attempts"), priority=1),
    Col("ERROR", lambda i: i["error"]),
]
OP_COLUMNS = [
    Col("ID", lambda o: o["id"], key=True),
    Col("KIND", lambda o: o["kind"]),
    Col("ACTION", lambda o: o["action"]),
    Col("STATUS", lambda o: o["status"]),
    Col("MACHINES", lambda o: len(o.get("items", []))),
    Col("CREATED", lambda o: o["created_at"], key=True),
    Col("BY", lambda o: o["requested_by"], priority=1),
    Col("ERROR", lambda o: o["error"]),
]
STATE_COLUMNS = [
    Col("MACHINE", lambda r: r["machine"], key=True),
    Col("POWER", lambda r: r["state"]),
    Col("ERROR", lambda r: r["error"]),
]

Wait = Annotated[
    bool, typer.Option("--wait/--no-wait", help="Wait for the result, or print the id and exit 0.")
]
Timeout = Annotated[float, typer.Option("--timeout", help="Seconds to wait at most.")]


def target_error(names: list[str] | None, selector: str | None) -> str | None:
    """Pure: what is wrong with the machines a command was given, or None."""
    if names and selector:
        return "give machine names or --selector, not both"
    if not names and not selector:
        return "give machine names or --selector"
    return None


def report(ops: list[dict[str, Any]], output: Output) -> None:
    """The finished operations' per-machine results; exit 1 unless all succeeded."""
    if output is Output.json:
        emit_json(ops)
    else:
        show([i for op in ops for i in op["items"]], output, ITEM_COLUMNS)
    if any(op["status"] != "succeeded" for op in ops):
        raise typer.Exit(1)


def accepted(ops: list[dict[str, Any]], output: Output) -> None:
    """``--no-wait``: the accepted operations (their ids), exit 0."""
    if output is Output.json:
        emit_json(ops)
        return
    for op in ops:
        typer.echo(f"operation {op['id']} {op['status']} ({len(op.get('items', []))} machines)")


def finish(
    cl: Client, ops: list[dict[str, Any]], wait: bool, timeout: float, output: Output
) -> None:
    if not wait:
        accepted(ops, output)
        return
    report(wait_ops(cl, ops, timeout, output), output)


def _names_for(cl: Client, selector: str) -> list[str]:
    machines = fetch_all(cl, "/api/v1/machines", {"selector": selector, "limit": 500}, None)
    return [m["name"] for m in machines]


def power_cmd(
    action: Annotated[str, typer.Argument(help="on, off, soft-off, cycle, reset or status")],
    names: Annotated[list[str] | None, typer.Argument(help="Machine names or ids.")] = None,
    selector: Annotated[
        str | None, typer.Option("-l", "--selector", help="Instead of names.")
    ] = None,
    max_parallel: Annotated[
        int, typer.Option("--max-parallel", help="Machines at once (selector).")
    ] = 32,
    stagger_ms: Annotated[
        int, typer.Option("--stagger-ms", help="Gap between machine starts.")
    ] = 0,
    wait: Wait = True,
    timeout: Timeout = 600,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Power machines (verified by read-back) or read their state from the BMC."""
    problem = target_error(names, selector)
    if problem:
        fail(problem)
    cl = client(url, token_file)
    if action == "status":
        targets = _names_for(cl, selector) if selector else list(names or [])
        rows = [call(cl, "GET", f"/api/v1/machines/{n}/power") for n in targets]
        show(rows, output, STATE_COLUMNS)
        if any(r["error"] for r in rows):
            raise typer.Exit(1)
        return
    if selector:
        body = {
            "selector": selector,
            "action": action,
            "max_parallel": max_parallel,
            "stagger_ms": stagger_ms,
        }
        ops = [call(cl, "POST", "/api/v1/power", json=body)]
    else:
        ops = [
            call(cl, "POST", f"/api/v1/machines/{n}/power", json={"action": action})
            for n in names or []
        ]
    finish(cl, ops, wait, timeout, output)


@boot_app.command("set")
def boot_device_set(
    names: Annotated[list[str], typer.Argument(help="Machine names or ids.")],
    device: Annotated[str, typer.Option("--device", help="pxe, disk, bios or cdrom")] = "pxe",
    persistent: Annotated[
        bool, typer.Option("--persistent/--once", help="Every boot, or the next one only.")
    ] = False,
    uefi: Annotated[bool, typer.Option("--uefi/--legacy", help="Firmware boot mode.")] = True,
    wait: Wait = True,
    timeout: Timeout = 600,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Set the next (or every) boot device."""
    cl = client(url, token_file)
    body = {"device": device, "persistent": persistent, "uefi": uefi}
    ops = [call(cl, "PUT", f"/api/v1/machines/{n}/boot-device", json=body) for n in names]
    finish(cl, ops, wait, timeout, output)


@ops_app.command("list")
def ops_list(
    limit: Annotated[int, typer.Option("--limit", help="At most N operations.")] = 50,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Recent operations, newest first."""
    cl = client(url, token_file)
    show(fetch_all(cl, "/api/v1/operations", {"limit": min(limit, 500)}, limit), output, OP_COLUMNS)


@ops_app.command("show")
def ops_show(
    op_id: Annotated[str, typer.Argument(help="Operation id.")],
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """One operation and its per-machine results."""
    op = call(client(url, token_file), "GET", f"/api/v1/operations/{op_id}")
    if output is Output.json:
        emit_json(op)
        return
    show(op, output, OP_COLUMNS)
    show(op["items"], output, ITEM_COLUMNS)


@ops_app.command("wait")
def ops_wait(
    op_ids: Annotated[list[str], typer.Argument(help="Operation ids.")],
    timeout: Timeout = 600,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Wait for operations to finish; exit 1 unless all succeeded."""
    cl = client(url, token_file)
    ops = [call(cl, "GET", f"/api/v1/operations/{i}") for i in op_ids]
    report(wait_ops(cl, ops, timeout, output), output)
