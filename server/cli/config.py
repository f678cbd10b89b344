"""``bronze config``: layered machine config. ``config patches`` manages the JSON merge
patches (fleet, selector, machine); ``config show`` prints a machine's rendered config and
where each field came from; ``config dry-run`` renders it as if a patch were added, without
storing anything; ``config confirm`` keeps a config applied in ``try`` mode.

Configs are trees, so ``show`` and ``dry-run`` print JSON whatever ``-o`` says; patch lists are
tables.
"""

from __future__ import annotations

import json
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
    fail,
    show,
)

app = typer.Typer(no_args_is_help=True, help="Machine config: patches, rendered config, dry-run.")
patches_app = typer.Typer(no_args_is_help=True, help="Config patches (fleet, selector, machine).")
app.add_typer(patches_app, name="patches")

PATCH_COLUMNS = [
    Col("NAME", lambda p: p["name"], key=True),
    Col("SCOPE", lambda p: p["scope"]),
    Col("TARGET", lambda p: p.get("selector") or p.get("machine") or p.get("machine_id")),
    Col("PRIORITY", lambda p: p["priority"], priority=1),
    Col("ID", lambda p: p["id"], key=True, priority=2),
    Col("MACHINES", lambda p: p.get("machines"), priority=1),
]

Mode = Annotated[
    str, typer.Option("--mode", help="How agents apply it: auto, no-reboot, staged or try.")
]
TryTimeout = Annotated[
    int, typer.Option("--try-timeout", help="try mode: revert after N s unless confirmed.")
]
PatchFile = Annotated[
    str, typer.Option("--patch-file", help="JSON merge patch file ('-' = stdin).")
]


def read_patch(path: str) -> dict[str, Any]:
    try:
        text = typer.get_text_stream("stdin").read() if path == "-" else open(path).read()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    try:
        patch = json.loads(text)
    except ValueError as exc:
        fail(f"{path}: not JSON: {exc}")
    if not isinstance(patch, dict):
        fail(f"{path}: a patch is a JSON object")
    return patch


@patches_app.command("list")
def patches_list(
    url: UrlOpt = None, token_file: TokenFileOpt = None, output: OutOpt = Output.table
) -> None:
    """List config patches in rendering order."""
    show(call(client(url, token_file), "GET", "/api/v1/config-patches"), output, PATCH_COLUMNS)


@patches_app.command("create")
def patches_create(
    name: Annotated[str, typer.Argument(help="Patch name.")],
    patch_file: PatchFile,
    scope: Annotated[str, typer.Option("--scope", help="fleet, selector or machine.")] = "fleet",
    selector: Annotated[
        str | None, typer.Option("-l", "--selector", help="scope selector: which machines.")
    ] = None,
    machine: Annotated[
        str | None, typer.Option("--machine", help="scope machine: its name or id.")
    ] = None,
    priority: Annotated[int, typer.Option("--priority", help="Lower first in its scope.")] = 0,
    mode: Mode = "auto",
    try_timeout: TryTimeout = 120,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Add a patch; affected machines are re-rendered and their agents get the new config."""
    body: dict[str, Any] = {
        "name": name,
        "scope": scope,
        "priority": priority,
        "patch": read_patch(patch_file),
    }
    if selector is not None:
        body["selector"] = selector
    if machine is not None:
        body["machine"] = machine
    params = {"mode": mode, "try_timeout_seconds": try_timeout}
    data = call(client(url, token_file), "POST", "/api/v1/config-patches", json=body, params=params)
    show(data, output, PATCH_COLUMNS)


@patches_app.command("delete")
def patches_delete(
    name: Annotated[str, typer.Argument(help="Patch name or id.")],
    mode: Mode = "auto",
    try_timeout: TryTimeout = 120,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Delete a patch; affected machines are re-rendered."""
    params = {"mode": mode, "try_timeout_seconds": try_timeout}
    data = call(client(url, token_file), "DELETE", f"/api/v1/config-patches/{name}", params=params)
    show(data, output, PATCH_COLUMNS)


@app.command("show")
def config_show(
    machine: Annotated[str, typer.Argument(help="Machine name or id.")],
    diff: Annotated[
        bool, typer.Option("--diff", help="Also what differs from the applied config.")
    ] = False,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.json,
) -> None:
    """A machine's rendered config, its provenance, desired and applied versions (JSON)."""
    params = {"diff": "applied"} if diff else {}
    emit_json(
        call(client(url, token_file), "GET", f"/api/v1/machines/{machine}/config", params=params)
    )


@app.command("dry-run")
def config_dry_run(
    machine: Annotated[str, typer.Argument(help="Machine name or id.")],
    patch_file: PatchFile,
    name: Annotated[
        str, typer.Option("--name", help="Patch name (replaces the patch of that name).")
    ] = "dry-run",
    scope: Annotated[str, typer.Option("--scope", help="fleet, selector or machine.")] = "machine",
    selector: Annotated[
        str | None, typer.Option("-l", "--selector", help="scope selector.")
    ] = None,
    priority: Annotated[int, typer.Option("--priority", help="Order in its scope.")] = 0,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.json,
) -> None:
    """Render the machine's config as if the patch were added; nothing is stored (JSON)."""
    body: dict[str, Any] = {
        "name": name,
        "scope": scope,
        "priority": priority,
        "patch": read_patch(patch_file),
    }
    if selector is not None:
        body["selector"] = selector
    emit_json(
        call(
            client(url, token_file), "POST", f"/api/v1/machines/{machine}/config/dry-run", json=body
        )
    )


@app.command("confirm")
def config_confirm(
    machine: Annotated[str, typer.Argument(help="Machine name or id.")],
    version: Annotated[
        str | None, typer.Option("--version", help="The tried version (default: desired).")
    ] = None,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Keep a config applied in try mode (else the node reverts it at the timeout)."""
    body = {"version": version} if version else {}
    data = call(
        client(url, token_file), "POST", f"/api/v1/machines/{machine}/config/confirm", json=body
    )
    if output is Output.json:
        emit_json(data)
        return
    show(
        data,
        output,
        [
            Col("MACHINE", lambda d: d["machine_id"], key=True),
            Col("VERSION", lambda d: d["version"], key=True),
            Col("DELIVERY", lambda d: d["delivery"]),
            Col("OK", lambda d: d["result"] and d["result"]["ok"]),
            Col("ERROR", lambda d: d["result"] and d["result"]["error"]),
        ],
    )
