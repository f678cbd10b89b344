"""``bronze machines import | inspect | accept``: registering a rack (docs/provisioning.md).

``import`` reads a manifest (:mod:`server.cli.manifest`), reads the BMC passwords the manifest
names (files, environment variables) and sends the rows to ``POST /api/v1/machines:import``: the
passwords travel in the request body, never on a command line. Every bad row is printed with its
row number; nothing is written unless all rows are valid (``--partial`` takes the valid ones).
Exit status 1 when any row was not imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import httpx
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
from server.cli.machines import MACHINE_COLUMNS, Selector, labels_of
from server.cli.manifest import ManifestError, read_manifest
from server.cli.progress import waiting

INSPECT_COLUMNS = [
    Col("MACHINE", lambda r: r["machine"], key=True),
    Col("OK", lambda r: "yes" if r["ok"] else "no"),
    Col("UUID", lambda r: (r.get("found") or {}).get("uuid"), key=True),
    Col("SERIAL", lambda r: (r.get("found") or {}).get("serial"), key=True),
    Col("MACS", lambda r: "\n".join((r.get("found") or {}).get("macs") or []), key=True),
    Col("CHANGES", lambda r: ",".join(sorted(r.get("changes") or {})), priority=1),
    Col(
        "CONFLICTS / ERROR",
        lambda r: r.get("error") or "; ".join(_conflict(c) for c in r.get("conflicts") or []),
    ),
]


def _conflict(c: dict[str, Any]) -> str:
    return f"{c['field']}: recorded {c['recorded']}, found {c['found']}"


def _row_line(e: dict[str, Any]) -> str:
    who = f" ({e['name']})" if e.get("name") else ""
    field = f"{e['field']}: " if e.get("field") else ""
    return f"row {e['row']}{who}: {field}{e['message']}"


def _post_import(
    url: str | None, token_file: str | None, body: Any, partial: bool, dry_run: bool
) -> Any:
    """POST the rows; a 422 ``invalid_rows`` answer is returned (its row errors are the point),
    any other failure ends the command."""
    cl = client(url, token_file)
    headers = {"Authorization": f"Bearer {cl.token}"} if cl.token else {}
    try:
        resp = httpx.post(
            cl.url + "/api/v1/machines:import",
            params={"partial": str(partial).lower(), "dry_run": str(dry_run).lower()},
            json=body,
            headers=headers,
            timeout=max(cl.timeout, 120.0),
        )
    except httpx.HTTPError as exc:
        fail(f"cannot reach {cl.url}: {exc.__class__.__name__}: {exc}")
    try:
        data = resp.json()
    except ValueError:
        fail(f"{resp.status_code}: {resp.text[:200]}")
    if resp.status_code == 422 and data.get("error", {}).get("code") == "invalid_rows":
        return {"written": False, "errors": data["error"]["details"]["errors"]}
    if resp.status_code >= 400:
        err = data.get("error") or {}
        fail(f"{resp.status_code} {err.get('code')}: {err.get('message')}")
    return data


def import_cmd(
    manifest: Annotated[Path, typer.Argument(help="Rack manifest: .csv, .yaml/.yml or .json.")],
    partial: Annotated[
        bool, typer.Option("--partial", help="Import the valid rows even if others are bad.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Check every row, say what would change, write nothing."),
    ] = False,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Register (or update) the machines of a rack manifest; idempotent."""
    try:
        rows = read_manifest(manifest)
    except ManifestError as exc:
        fail(str(exc))
    local = [
        {"row": r.number, "name": None, "field": None, "message": r.error} for r in rows if r.error
    ]
    good = [r for r in rows if r.error is None]
    result: dict[str, Any] = {"written": False, "errors": []}
    if good:
        # With rows already bad here and no --partial, the server only checks the others
        # (dry run), so that every bad row is reported at once and nothing is written.
        body = {"machines": [r.body for r in good], "rows": [r.number for r in good]}
        result = _post_import(
            url, token_file, body, partial, dry_run or bool(local and not partial)
        )
    result["errors"] = sorted(local + result.get("errors", []), key=lambda e: e["row"])
    if output is Output.json:
        emit_json(result)
    else:
        _print_import(result, partial)
    if result["errors"]:
        raise typer.Exit(1)


def _print_import(result: dict[str, Any], partial: bool) -> None:
    for e in result["errors"]:
        typer.echo(_row_line(e), err=True)
    if result["errors"] and not partial:
        typer.echo("nothing written (fix the rows above, or use --partial)", err=True)
        return
    counts = {k: len(result.get(k) or []) for k in ("created", "updated", "unchanged", "accepted")}
    prefix = "dry run, nothing written; would be: " if result.get("dry_run") else ""
    typer.echo(prefix + ", ".join(f"{n} {k}" for k, n in counts.items()))
    for a in result.get("accepted") or []:
        typer.echo(f"accepted {a['discovered']} as {a['machine']} (rule {a['rule']})")


def inspect_cmd(
    name: Annotated[str | None, typer.Argument(help="Machine name or id.")] = None,
    selector: Selector = None,
    max_parallel: Annotated[
        int, typer.Option("--max-parallel", help="BMCs inspected at once (with -l).")
    ] = 16,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Read UUID, serial, NICs and hardware through the BMC, without booting the machine."""
    if (name is None) == (selector is None):
        fail("give a machine name or -l SELECTOR")
    cl = client(url, token_file)
    with waiting(f"inspecting {name or selector} through the BMC...", output):
        if name is not None:
            items = [call(cl, "POST", f"/api/v1/machines/{name}/inspect")]
        else:
            body = {"selector": selector, "max_parallel": max_parallel}
            items = call(cl, "POST", "/api/v1/inspect", json=body)["items"]
    show(items, output, INSPECT_COLUMNS)
    if not all(i["ok"] for i in items):
        raise typer.Exit(1)


def accept_cmd(
    name: Annotated[str, typer.Argument(help="The discovered machine's name or id.")],
    as_name: Annotated[str | None, typer.Option("--as", help="Its new name.")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="KEY=VALUE (repeat).")] = None,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Accept a discovered machine: rename, label, phase registered."""
    body: dict[str, Any] = {"labels": labels_of(label or [])}
    if as_name:
        body["name"] = as_name
    show(
        call(client(url, token_file), "POST", f"/api/v1/machines/{name}/accept", json=body),
        output,
        MACHINE_COLUMNS,
    )
