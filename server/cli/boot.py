"""``bronze profiles`` (boot profiles: which kernel, initrds and arguments a machine boots,
chosen by label selector) and ``bronze assets`` (the files profiles name: kernels, initrds).

``assets upload`` computes the file's SHA-256 locally and sends it with the upload; the server
verifies it before keeping anything, so a truncated or corrupted transfer leaves no asset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
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
    show,
)

profiles_app = typer.Typer(no_args_is_help=True, help="Boot profiles (kernel, initrds, args).")
assets_app = typer.Typer(no_args_is_help=True, help="Boot assets (kernels, initrds) served.")

PROFILE_COLUMNS = [
    Col("NAME", lambda p: p["name"], key=True),
    Col("SELECTOR", lambda p: p["selector"] or "(all)"),
    Col("KERNEL", lambda p: p["kernel"]),
    Col("INITRDS", lambda p: "\n".join(p["initrds"])),
    Col("AGENT", lambda p: p["agent"], priority=1),
    Col("ARGS", lambda p: " ".join(p["args"]), priority=2),
]
ASSET_COLUMNS = [
    Col("NAME", lambda a: a["name"], key=True),
    Col("SIZE", lambda a: a["size"], key=True),
    Col("SHA256", lambda a: a["sha256"], key=True),
    Col("CREATED", lambda a: a["created_at"], key=True, priority=1),
    Col("BY", lambda a: a["created_by"], priority=2),
]

Args = Annotated[
    list[str] | None, typer.Option("--arg", help="Kernel argument (repeat); may use ${mac}.")
]
Initrds = Annotated[list[str] | None, typer.Option("--initrd", help="Asset or URL (repeat).")]
Kernel = Annotated[str, typer.Option("--kernel", help="Asset name or http(s)/${server} URL.")]
SelectorOpt = Annotated[
    str, typer.Option("-l", "--selector", help="Label selector; empty matches every machine.")
]
AgentOpt = Annotated[
    bool, typer.Option("--agent/--no-agent", help="Add the agent's kernel args and a token.")
]


def _profile_body(
    kernel: str, initrds: list[str] | None, args: list[str] | None, selector: str, agent: bool
) -> dict[str, Any]:
    return {
        "selector": selector,
        "kernel": kernel,
        "initrds": initrds or [],
        "args": args or [],
        "agent": agent,
    }


@profiles_app.command("list")
def profiles_list(
    url: UrlOpt = None, token_file: TokenFileOpt = None, output: OutOpt = Output.table
) -> None:
    """List boot profiles."""
    show(call(client(url, token_file), "GET", "/api/v1/profiles"), output, PROFILE_COLUMNS)


@profiles_app.command("show")
def profiles_show(
    name: Annotated[str, typer.Argument(help="Profile name.")],
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Show one boot profile."""
    show(call(client(url, token_file), "GET", f"/api/v1/profiles/{name}"), output, PROFILE_COLUMNS)


@profiles_app.command("create")
def profiles_create(
    name: Annotated[str, typer.Argument(help="Profile name.")],
    kernel: Kernel,
    initrd: Initrds = None,
    arg: Args = None,
    selector: SelectorOpt = "",
    agent: AgentOpt = False,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Create a boot profile (the most specific selector wins)."""
    body = {"name": name, **_profile_body(kernel, initrd, arg, selector, agent)}
    show(
        call(client(url, token_file), "POST", "/api/v1/profiles", json=body),
        output,
        PROFILE_COLUMNS,
    )


@profiles_app.command("replace")
def profiles_replace(
    name: Annotated[str, typer.Argument(help="Profile name.")],
    kernel: Kernel,
    initrd: Initrds = None,
    arg: Args = None,
    selector: SelectorOpt = "",
    agent: AgentOpt = False,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Replace a boot profile's whole definition."""
    body = _profile_body(kernel, initrd, arg, selector, agent)
    show(
        call(client(url, token_file), "PUT", f"/api/v1/profiles/{name}", json=body),
        output,
        PROFILE_COLUMNS,
    )


@profiles_app.command("delete")
def profiles_delete(
    name: Annotated[str, typer.Argument(help="Profile name.")],
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Delete a boot profile."""
    show(
        call(client(url, token_file), "DELETE", f"/api/v1/profiles/{name}"), output, PROFILE_COLUMNS
    )


@assets_app.command("list")
def assets_list(
    url: UrlOpt = None, token_file: TokenFileOpt = None, output: OutOpt = Output.table
) -> None:
    """List boot assets with their size and SHA-256."""
    show(call(client(url, token_file), "GET", "/api/v1/assets"), output, ASSET_COLUMNS)


@assets_app.command("show")
def assets_show(
    name: Annotated[str, typer.Argument(help="Asset name.")],
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Show one boot asset."""
    show(call(client(url, token_file), "GET", f"/api/v1/assets/{name}"), output, ASSET_COLUMNS)


CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


@assets_app.command("upload")
def assets_upload(
    file: Annotated[Path, typer.Argument(help="The file to upload.")],
    name: Annotated[
        str | None, typer.Option("--name", help="Asset name (default: the file's name).")
    ] = None,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Upload (or replace) an asset; its SHA-256 is verified by the server before it is kept."""
    try:
        digest, size = sha256_of(file), file.stat().st_size
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    cl = client(url, token_file)
    cl.timeout = max(cl.timeout, 300.0)  # large initrds on a slow link
    data = call(
        cl,
        "PUT",
        f"/api/v1/assets/{name or file.name}",
        params={"sha256": digest},
        content=_chunks(file),
        headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
    )
    show(data, output, ASSET_COLUMNS)


@assets_app.command("delete")
def assets_delete(
    name: Annotated[str, typer.Argument(help="Asset name.")],
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Delete an asset (refused while a profile names it)."""
    show(call(client(url, token_file), "DELETE", f"/api/v1/assets/{name}"), output, ASSET_COLUMNS)
