"""``bronze agent``: a machine's node agent as the server sees it (``show``), the single-use
enrollment token its next boot enrolls with (``enrollment-token``), and revoking its identity
(``revoke``: its certificate is no longer accepted; it must enroll again)."""

from __future__ import annotations

from typing import Annotated

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
from server.cli.secretfile import write_secret

app = typer.Typer(no_args_is_help=True, help="Node agents: state, enrollment tokens, revocation.")

AGENT_COLUMNS = [
    Col("MACHINE", lambda a: a["name"], key=True),
    Col("ENROLLED", lambda a: a["enrolled"]),
    Col("CONNECTED", lambda a: a["connected"]),
    Col("SESSION", lambda a: a.get("session")),
    Col("VERSION", lambda a: a.get("agent_version"), key=True),
    Col("LAST_SEEN", lambda a: a.get("last_seen"), key=True),
    Col("CONFIG_IN_SYNC", lambda a: (a.get("config") or {}).get("in_sync"), priority=1),
    Col("PENDING", lambda a: a.get("pending_commands"), priority=1),
]
TOKEN_COLUMNS = [
    Col("MACHINE", lambda t: t["name"], key=True),
    Col("EXPIRES", lambda t: t["expires_at"], key=True),
    Col("TOKEN", lambda t: t.get("token") or t.get("token_file"), key=True),
]


@app.command("show")
def agent_show(
    machines: Annotated[list[str], typer.Argument(help="Machine names or ids.")],
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Agent state: enrolled, connected, version, last seen, config sync."""
    cl = client(url, token_file)
    rows = [call(cl, "GET", f"/api/v1/machines/{m}/agent") for m in machines]
    show(rows if len(rows) > 1 or output is Output.table else rows[0], output, AGENT_COLUMNS)


@app.command("enrollment-token")
def agent_enrollment_token(
    machine: Annotated[str, typer.Argument(help="Machine name or id.")],
    boot_ref: Annotated[
        str, typer.Option("--boot-ref", help="What the token is for (audited).")
    ] = "manual",
    ttl: Annotated[int, typer.Option("--ttl", help="Seconds the token stays valid.")] = 1800,
    output_file: Annotated[
        str | None,
        typer.Option("--output-file", help="Write the token to FILE (mode 0600), not stdout."),
    ] = None,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Issue a single-use enrollment token for the machine's agent (replaces the previous)."""
    data = call(
        client(url, token_file),
        "POST",
        f"/api/v1/machines/{machine}/enrollment-token",
        json={"boot_ref": boot_ref, "ttl_seconds": ttl},
    )
    if output_file:
        try:
            write_secret(output_file, data["token"])
        except OSError as exc:
            fail(f"token issued but not written to {output_file}: {exc.strerror}")
        data = {**data, "token": None, "kernel_args": None, "token_file": output_file}
    if output is Output.json:
        emit_json(data)
    else:
        show(data, output, TOKEN_COLUMNS)


@app.command("revoke")
def agent_revoke(
    machine: Annotated[str, typer.Argument(help="Machine name or id.")],
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Revoke the agent's certificate: it must enroll again with a new token."""
    data = call(client(url, token_file), "POST", f"/api/v1/machines/{machine}/agent/revoke")
    if output is Output.json:
        emit_json(data)
    else:
        typer.echo(f"agent of {machine} revoked")
