"""``bronze events``: the fleet's audit trail (``/api/v1/events``), newest first."""

from __future__ import annotations

from typing import Annotated

import typer

from server.cli.common import OutOpt, Output, TokenFileOpt, UrlOpt, client, fetch_all, show
from server.cli.machines import EVENT_COLUMNS

app = typer.Typer(no_args_is_help=True, help="Audit trail of the whole fleet.")


@app.command("list")
def events_list(
    machine: Annotated[
        str | None, typer.Option("--machine", help="Only this machine (name or id).")
    ] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help="Kind or kind prefix, e.g. machine.")
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO 8601 instant.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO 8601 instant.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most N events.")] = 100,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """List events, newest first."""
    params = {
        "machine": machine,
        "kind": kind,
        "since": since,
        "until": until,
        "limit": min(limit, 1000),
    }
    show(fetch_all(client(url, token_file), "/api/v1/events", params, limit), output, EVENT_COLUMNS)
