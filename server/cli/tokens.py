"""``bronze token``: API tokens (admin). A token is shown once, at creation; the server keeps
only its hash. ``--output-file FILE`` writes it 0600 instead of printing it."""

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

app = typer.Typer(no_args_is_help=True, help="API tokens (admin).")

TOKEN_COLUMNS = [
    Col("NAME", lambda t: t["name"], key=True),
    Col("ROLE", lambda t: t["role"]),
    Col("CREATED", lambda t: t["created_at"], key=True),
    Col("REVOKED", lambda t: t["revoked_at"], key=True),
]


@app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="A unique name for the token.")],
    role: Annotated[
        str, typer.Option("--role", help="admin, operator, reader, or boot (bronze pxe)")
    ],
    output_file: Annotated[
        str | None,
        typer.Option(
            "--output-file", help="Write the token to FILE (mode 0600) instead of stdout."
        ),
    ] = None,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Create a token and print it once (only its hash is stored)."""
    data = call(
        client(url, token_file), "POST", "/api/v1/tokens", json={"name": name, "role": role}
    )
    if output_file:
        try:
            write_secret(output_file, data["token"])
        except OSError as exc:
            fail(
                f"token {name} created but not written to {output_file}: {exc.strerror}; "
                f"revoke it (bronze token revoke {name})"
            )
        data = {**data, "token": None, "token_file": output_file}
        if output is Output.table:
            typer.echo(f"token {name} ({role}) written to {output_file} (mode 0600)")
            return
    if output is Output.json:
        emit_json(data)
    else:
        typer.echo(data["token"])


@app.command("list")
def token_list(
    url: UrlOpt = None, token_file: TokenFileOpt = None, output: OutOpt = Output.table
) -> None:
    """List API tokens (never their secrets)."""
    show(call(client(url, token_file), "GET", "/api/v1/tokens"), output, TOKEN_COLUMNS)


@app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="The token's name.")],
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Revoke a token by name (the last admin token cannot be revoked)."""
    show(call(client(url, token_file), "DELETE", f"/api/v1/tokens/{name}"), output, TOKEN_COLUMNS)
