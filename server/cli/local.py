"""Commands that act on this host rather than through the REST API: ``bronze serve`` (the
central server), ``bronze db`` (schema migrations) and ``bronze pxe`` (the boot plane next to a
rack, asking a central server what to boot).

``bronze pxe`` checks its token before it serves anything: it posts an empty timeline batch (the
one write a ``boot`` token may make, and a no-op). A 401 or 403 ends the process at once with one
line naming the cause, rather than answering DHCP with decisions it cannot get and logging the
refusal forever. An unreachable server is not fatal at start (the rack may come up first); the
timeline sink then backs off (see :mod:`server.boot.remote`).
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import httpx
import typer

from server.cli.common import fail, read_secret_file

db_app = typer.Typer(
    no_args_is_help=True, help="Database schema (local, uses BRONZE_DATABASE_URL)."
)


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (BRONZE_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (BRONZE_API_PORT).")] = None,
    no_migrate: Annotated[
        bool, typer.Option("--no-migrate", help="Do not run migrations on start.")
    ] = False,
) -> None:
    """Run the central server (REST API; migrates the database first)."""
    import logging

    import uvicorn
    from pydantic import ValidationError

    from server.app import create_app
    from server.settings import ServerSettings

    flags: dict[str, Any] = {"api_host": host, "api_port": port}
    try:
        settings = ServerSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:  # one line per setting, never the (possibly secret) value
        for e in exc.errors():
            typer.echo(f"error: {'.'.join(map(str, e['loc']))}: {e['msg']}", err=True)
        raise typer.Exit(2) from None
    from server.logs import setup_logging, uvicorn_log_config

    setup_logging(settings.log_level, settings.log_format)
    _raise_open_files_limit()
    application = create_app(settings, migrate_db=False if no_migrate else None)
    token_path = settings.data_dir / "admin.token"
    if settings.log_format == "json":  # every line of stderr is then one JSON object
        logging.getLogger("bronze").info(
            "data dir=%s admin_token_file=%s", settings.data_dir, token_path
        )
    else:
        typer.echo(f"bronze: data in {settings.data_dir}; admin token file {token_path}", err=True)
    uvicorn.run(
        application,
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level,
        proxy_headers=False,
        log_config=uvicorn_log_config(settings.log_format) or uvicorn.config.LOGGING_CONFIG,
    )


def _raise_open_files_limit() -> None:
    """Raise the soft open-files limit to the hard one, as Go programs do at start: each kept
    BMC session, agent stream and TFTP transfer holds a descriptor, and the usual soft limit
    (1024, systemd's default) is below a fleet's worth. Only the soft limit moves."""
    import logging
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logging.getLogger("bronze").warning("open-files limit stays %d: %s", soft, exc)
            return
        logging.getLogger("bronze").info("open-files limit raised from %d to %d", soft, target)


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from server.app import prepare_data_dir
    from server.inventory import migrate
    from server.settings import ServerSettings

    settings = ServerSettings()
    prepare_data_dir(settings)
    try:
        migrate.upgrade(settings.effective_database_url, revision)
    except Exception as exc:  # noqa: BLE001 - one line for the operator
        fail(f"migration failed: {exc.__class__.__name__}: {str(exc).splitlines()[0]}")
    typer.echo(f"database at {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision.")]) -> None:
    """Revert migrations down to REVISION (e.g. base)."""
    from server.inventory import migrate
    from server.settings import ServerSettings

    migrate.downgrade(ServerSettings().effective_database_url, revision)
    typer.echo(f"database at {revision}")


def check_boot_token(server: str, token: str, timeout: float = 10.0) -> str | None:
    """Ask the server whether ``token`` may run a boot plane. Returns a fatal problem (bad
    token, wrong role) or None; an unreachable server is not fatal (logged by the caller)."""
    url = server.rstrip("/") + "/api/v1/boot/timeline"
    try:
        resp = httpx.post(
            url,
            json={"events": []},
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            follow_redirects=False,
        )
    except httpx.HTTPError:
        return None
    if resp.status_code == 401:
        return f"the server {server} refused the token (401): it is unknown or revoked"
    if resp.status_code == 403:
        return f"the token may not run a boot plane on {server} (403): create one with role boot"
    if resp.status_code >= 400:
        return f"the server {server} answered HTTP {resp.status_code} to the token check"
    return None


def pxe_cmd(
    server: Annotated[
        str,
        typer.Option("--server", envvar="BRONZE_PXE_SERVER_URL", help="Central bronze server URL."),
    ],
    token_file: Annotated[
        str | None,
        typer.Option("--token-file", help="File with a token of role boot (or BRONZE_PXE_TOKEN)."),
    ] = None,
    token: Annotated[str | None, typer.Option("--token", hidden=True)] = None,
) -> None:
    """Run the boot plane (DHCP + TFTP) alone, asking SERVER what to boot (BRONZE_PXE_*)."""
    import asyncio

    from pxe import PxeSettings
    from server.boot import remote

    if token is not None:
        fail(
            "tokens are never taken from argv (other users can read it in ps); "
            "use --token-file or BRONZE_PXE_TOKEN, and rotate the token you just passed"
        )
    from server.logs import setup_logging

    settings = PxeSettings(server_url=server)
    # BRONZE_LOG_FORMAT=json works here too (the boot plane has no ServerSettings to carry it).
    log_format = os.environ.get("BRONZE_LOG_FORMAT", "text")
    setup_logging("info", "json" if log_format == "json" else "text")
    secret = settings.token.get_secret_value() if settings.token else None
    if token_file:
        secret = read_secret_file(token_file)
    if not secret:
        fail("no token: use --token-file or BRONZE_PXE_TOKEN (a token of role boot)")
    problem = check_boot_token(server, secret)
    if problem:
        fail(problem)
    try:
        asyncio.run(remote.run(settings, server, secret))
    except OSError as exc:
        fail(f"cannot start the boot plane: {exc}")
