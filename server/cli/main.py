"""The ``bronze`` command line, assembled from one module per command group.

``serve``, ``db`` and ``pxe`` act on this host (:mod:`server.cli.local`); every other group talks
to the REST API through :mod:`server.cli.client`, with the options and output of
:mod:`server.cli.common` (tables for people, ``-o json`` for scripts; a failure is one
``error: ...`` line on stderr and exit 1). Each REST resource has its group:

=================  ==========================================================
machines           /api/v1/machines (+ events, timeline, :import, inspect, accept)
events             /api/v1/events
token              /api/v1/tokens
power, boot-device /api/v1/machines/{id}/power, /api/v1/power, /boot-device
operations         /api/v1/operations
profiles, assets   /api/v1/profiles, /api/v1/assets
config             /api/v1/config-patches, /api/v1/machines/{id}/config
agent              /api/v1/machines/{id}/agent, /enrollment-token
node               /api/v1/machines/{id}/reboot, /node/{op}
images             /api/v1/images (+ ``images build``: the node OS image, agent.image)
upgrade            /api/v1/upgrades
provision          /api/v1/provisions
lab                this host: a virtual rack (server/lab/, docs/lab.md)
=================  ==========================================================
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from server.cli import (
    agent,
    boot,
    config,
    events,
    image_build,
    images,
    lab,
    local,
    machines,
    node,
    power,
    provision,
    registration,
    tokens,
    upgrades,
)

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="bronze: bare-metal fleet manager"
)


def package_version() -> str:
    try:
        return version("bronze")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bronze {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """bronze: bare-metal fleet manager."""


app.command("serve")(local.serve)
app.add_typer(local.db_app, name="db")
app.command("pxe")(local.pxe_cmd)
app.add_typer(machines.app, name="machines")
machines.app.command("import")(registration.import_cmd)
machines.app.command("inspect")(registration.inspect_cmd)
machines.app.command("accept")(registration.accept_cmd)
app.add_typer(events.app, name="events")
app.add_typer(tokens.app, name="token")
app.command("power")(power.power_cmd)
app.add_typer(power.boot_app, name="boot-device")
app.add_typer(power.ops_app, name="operations")
app.add_typer(boot.profiles_app, name="profiles")
app.add_typer(boot.assets_app, name="assets")
app.add_typer(config.app, name="config")
app.add_typer(agent.app, name="agent")
app.add_typer(images.app, name="images")
images.app.command("build")(image_build.build_cmd)
app.add_typer(upgrades.app, name="upgrade")
app.add_typer(provision.app, name="provision")
app.command("node")(node.node)
app.add_typer(lab.app, name="lab")

from server.cli.ca import ca_app  # noqa: E402

app.add_typer(ca_app, name="ca")


def main() -> None:  # pragma: no cover - console script shim
    sys.exit(app())
