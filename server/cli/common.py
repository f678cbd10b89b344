"""What every ``bronze`` command group shares: the ``--url`` / ``--token-file`` / ``-o`` options,
one-line failures, the REST calls, and output.

Output is for two readers. ``-o json`` is for scripts: exactly one JSON document on stdout and
nothing else (no progress, no headers). ``-o table`` is for people: a ``rich`` table sized to the
terminal (``COLUMNS``, else 80 when stdout is not a terminal). A table never cuts an identifier:
columns marked ``key`` (names, MACs, addresses, ids, times) keep their full width and are never
wrapped; free-text columns fold onto more lines; when even that does not fit, the free-text
columns are dropped from the right (lowest priority first) rather than cutting a key. If the key
columns alone are wider than the terminal, the table is printed wider than the terminal: a line
the terminal wraps is still copyable, a cut MAC is not.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from server.cli.client import Client, ClientError, resolve


class Output(StrEnum):
    """How a command prints its result."""

    table = "table"
    """A table for people, sized to the terminal."""
    json = "json"
    """One JSON document on stdout, nothing else: for scripts."""


UrlOpt = Annotated[str | None, typer.Option("--url", help="API URL (or BRONZE_URL).")]
TokenFileOpt = Annotated[
    str | None,
    typer.Option("--token-file", help="File holding the API token (or BRONZE_TOKEN[_FILE])."),
]
OutOpt = Annotated[Output, typer.Option("-o", "--output", help="table or json.")]


def fail(message: str) -> NoReturn:
    """One ``error: ...`` line on stderr, exit 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def client(url: str | None, token_file: str | None) -> Client:
    try:
        return Client(*resolve(url, token_file))
    except ClientError as exc:
        fail(str(exc))


def call(cl: Client, method: str, path: str, **kw: Any) -> Any:
    try:
        return cl.request(method, path, **kw)
    except ClientError as exc:
        fail(str(exc))


def items_of(page: Any) -> tuple[list[dict[str, Any]], str | None]:
    """A list answer as ``(items, next_cursor)``: accepts a bare JSON array (older servers) and
    ``{"items": [...], "next_cursor": ...}``."""
    if isinstance(page, list):
        return page, None
    if isinstance(page, dict) and isinstance(page.get("items"), list):
        return page["items"], page.get("next_cursor") or None
    raise ClientError("the server's answer is neither a list nor {items, next_cursor}")


def fetch_all(cl: Client, path: str, params: dict[str, Any], limit: int | None) -> list[Any]:
    """Every item of a list endpoint (following ``next_cursor``), at most ``limit``."""
    params = {k: v for k, v in params.items() if v is not None}
    out: list[Any] = []
    while True:
        try:
            got, cursor = items_of(cl.request("GET", path, params=params))
        except ClientError as exc:
            fail(str(exc))
        out.extend(got)
        if cursor is None or (limit is not None and len(out) >= limit):
            return out[:limit] if limit is not None else out
        params["cursor"] = cursor


@dataclass(frozen=True)
class Col:
    """One table column: its title, how to get the cell from a row, and whether it is a key
    (an identifier never cut or wrapped). ``priority``: higher is dropped first when the
    terminal is too narrow (keys are never dropped)."""

    title: str
    get: Callable[[Any], Any]
    key: bool = False
    priority: int = 0


def cell(row: Any, col: Col) -> str:
    try:
        value = col.get(row)
    except (KeyError, TypeError, AttributeError):
        value = None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


MIN_FOLD = 8
"""The narrowest a folding column may become before the table drops it instead."""


def fit_columns(
    cols: Sequence[Col], widths: Sequence[int], available: int
) -> tuple[list[int], int]:
    """Pure: which columns to keep for a terminal ``available`` cells wide, and the width to
    render at. ``widths`` are each column's natural (widest cell or title) width. Keys always
    stay at full width; other columns may fold down to ``MIN_FOLD`` and are dropped (highest
    priority number first, then rightmost) while the table does not fit."""
    keep = list(range(len(cols)))

    def need(idx: list[int]) -> int:
        gaps = max(len(idx) - 1, 0) * 2  # rich's padding between columns (box=None)
        return gaps + sum(widths[i] if cols[i].key else min(widths[i], MIN_FOLD) for i in idx)

    while need(keep) > available:
        droppable = [i for i in keep if not cols[i].key]
        if not droppable:
            break
        keep.remove(max(droppable, key=lambda i: (cols[i].priority, i)))
    return keep, max(available, need(keep))


def render_table(rows: Sequence[Any], cols: Sequence[Col], console: Console) -> None:
    cells = [[cell(r, c) for c in cols] for r in rows]
    widths = [
        max([len(c.title)] + [max(map(len, row[i].splitlines() or [""])) for row in cells])
        for i, c in enumerate(cols)
    ]
    keep, width = fit_columns(cols, widths, console.width)
    table = Table(box=None, header_style="bold", pad_edge=False)
    for i in keep:
        c = cols[i]
        if c.key:
            table.add_column(c.title, no_wrap=True, min_width=widths[i], overflow="ignore")
        else:
            table.add_column(c.title, overflow="fold")
    for row in cells:
        # Text, not str: rich would turn `:cd:` in a MAC into an emoji and `[x]` into markup
        table.add_row(*[Text(row[i]) for i in keep])
    dropped = [cols[i].title for i in range(len(cols)) if i not in keep]
    console.print(table, width=width, crop=False, soft_wrap=False)
    if dropped:
        err_console().print(f"(columns not shown, too narrow: {', '.join(dropped)}; use -o json)")


_OUT: Console | None = None
_ERR: Console | None = None


def out_console() -> Console:
    global _OUT
    if _OUT is None:
        _OUT = Console(highlight=False)
    return _OUT


def err_console() -> Console:
    global _ERR
    if _ERR is None:
        _ERR = Console(stderr=True, highlight=False)
    return _ERR


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def show(data: Any, output: Output, cols: Sequence[Col]) -> None:
    """Print ``data`` (a row or a list of rows) as JSON or as a table of ``cols``."""
    if output is Output.json:
        emit_json(data)
        return
    render_table(data if isinstance(data, list) else [data], cols, out_console())


def read_secret_file(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()
