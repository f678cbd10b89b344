"""``bronze ca``: the fleet CA on this server's data directory (local, like ``bronze db``).

Rotation is two steps, each followed by a restart of every server replica sharing the PKI
directory (``server.agents.pki_files`` explains why the fleet stays connected):

* ``bronze ca rotate``: a new CA signs, the old one stays trusted;
* ``bronze ca retire-previous``: after at least one client-certificate lifetime (24 h), the old
  CA is no longer trusted and the server certificate is reissued by the new CA at start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ca_app = typer.Typer(no_args_is_help=True, help="Fleet CA (local, uses BRONZE_DATA_DIR).")

DirOpt = Annotated[
    str | None, typer.Option("--pki-dir", help="PKI directory (default: BRONZE_DATA_DIR/pki).")
]


def _dir(pki_dir: str | None) -> Path:
    from server.settings import ServerSettings

    return Path(pki_dir) if pki_dir else ServerSettings().data_dir / "pki"


@ca_app.command("status")
def status(pki_dir: DirOpt = None) -> None:
    """The signing CA, a previous CA still trusted, and their expiry."""
    from server.agents.pki import CA_CERT_FILE, FleetCA

    directory = _dir(pki_dir)
    if not (directory / CA_CERT_FILE).exists():
        typer.echo(f"error: no fleet CA in {directory}", err=True)
        raise typer.Exit(1)
    ca = FleetCA.load_or_create(directory)
    for role, cert in [("signing", ca.cert), *[("previous", c) for c in ca.previous]]:
        typer.echo(f"{role}\t{cert.serial_number:x}\tnot_after={cert.not_valid_after_utc}")


@ca_app.command("rotate")
def rotate(pki_dir: DirOpt = None) -> None:
    """Step 1: create a new signing CA; keep trusting the current one. Restart the server."""
    from server.agents.pki import PkiError
    from server.agents.pki_files import rotate_ca

    try:
        ca = rotate_ca(_dir(pki_dir))
    except PkiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"new fleet CA {ca.cert.serial_number:x}; previous CA still trusted")
    typer.echo("restart the server; run `bronze ca retire-previous` after 24 h")


@ca_app.command("retire-previous")
def retire_previous(pki_dir: DirOpt = None) -> None:
    """Step 2: stop trusting the previous CA. Restart the server."""
    from server.agents.pki_files import retire_previous_ca

    if not retire_previous_ca(_dir(pki_dir)):
        typer.echo("error: no previous CA (no rotation in progress)", err=True)
        raise typer.Exit(1)
    typer.echo("previous fleet CA retired; restart the server")
