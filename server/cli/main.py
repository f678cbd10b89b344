"""The ``bronze`` command line: ``serve`` and ``db upgrade`` act locally; everything else talks to
the REST API. Tables for people, ``-o json`` for scripts; failures exit non-zero with one line."""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from server.cli.client import Client, ClientError, resolve

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="bronze: bare-metal fleet manager"
)
db_app = typer.Typer(
    no_args_is_help=True, help="Database schema (local, uses BRONZE_DATABASE_URL)."
)
token_app = typer.Typer(no_args_is_help=True, help="API tokens (admin).")
machines_app = typer.Typer(no_args_is_help=True, help="Machine inventory.")
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")
app.add_typer(machines_app, name="machines")
boot_app = typer.Typer(no_args_is_help=True, help="One-time or persistent boot device.")
app.add_typer(boot_app, name="boot-device")

out = Console()


class Output(StrEnum):
    table = "table"
    json = "json"


UrlOpt = Annotated[str | None, typer.Option("--url", help="API URL (or BRONZE_URL).")]
TokenFileOpt = Annotated[
    str | None,
    typer.Option("--token-file", help="File holding the API token (or BRONZE_TOKEN[_FILE])."),
]
OutOpt = Annotated[Output, typer.Option("-o", "--output")]


def fail(message: str) -> NoReturn:
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


def show(data: Any, output: Output, columns: list[tuple[str, Any]]) -> None:
    if output is Output.json:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    rows = data if isinstance(data, list) else [data]
    table = Table(box=None, header_style="bold")
    for title, _ in columns:
        table.add_column(title)
    for row in rows:
        table.add_row(*[str(get(row)) if get(row) is not None else "" for _, get in columns])
    out.print(table)


# --- local commands -------------------------------------------------------------------------------


@app.command()
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

    from server.app import create_app
    from server.settings import ServerSettings

    from pydantic import ValidationError

    flags = {"api_host": host, "api_port": port}
    try:
        settings = ServerSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:  # one line per setting, never the (possibly secret) value
        for e in exc.errors():
            typer.echo(f"error: {'.'.join(map(str, e['loc']))}: {e['msg']}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    _raise_open_files_limit()
    application = create_app(settings, migrate_db=False if no_migrate else None)
    token_path = settings.data_dir / "admin.token"
    typer.echo(f"bronze: data in {settings.data_dir}; admin token file {token_path}", err=True)
    uvicorn.run(
        application,
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level,
        proxy_headers=False,
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
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
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
def db_downgrade(revision: Annotated[str, typer.Argument()]) -> None:
    """Revert migrations down to REVISION (e.g. base)."""
    from server.inventory import migrate
    from server.settings import ServerSettings

    migrate.downgrade(ServerSettings().effective_database_url, revision)
    typer.echo(f"database at {revision}")


# --- tokens -----------------------------------------------------------------------------------------

TOKEN_COLUMNS = [
    ("NAME", lambda t: t["name"]),
    ("ROLE", lambda t: t["role"]),
    ("CREATED", lambda t: t["created_at"]),
    ("REVOKED", lambda t: t["revoked_at"]),
]


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name")],
    role: Annotated[
        str, typer.Option("--role", help="admin, operator, reader, or boot (bronze pxe)")
    ],
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Create a token and print it once (only its hash is stored)."""
    data = call(
        client(url, token_file), "POST", "/api/v1/tokens", json={"name": name, "role": role}
    )
    if output is Output.json:
        show(data, output, [])
    else:
        typer.echo(data["token"])


@token_app.command("list")
def token_list(
    url: UrlOpt = None, token_file: TokenFileOpt = None, output: OutOpt = Output.table
) -> None:
    show(call(client(url, token_file), "GET", "/api/v1/tokens"), output, TOKEN_COLUMNS)


@token_app.command("revoke")
def token_revoke(
    name: str, url: UrlOpt = None, token_file: TokenFileOpt = None, output: OutOpt = Output.table
) -> None:
    show(call(client(url, token_file), "DELETE", f"/api/v1/tokens/{name}"), output, TOKEN_COLUMNS)


# --- machines ---------------------------------------------------------------------------------------

MACHINE_COLUMNS = [
    ("NAME", lambda m: m["name"]),
    ("PHASE", lambda m: m["phase"]),
    ("POWER", lambda m: m["power"]["observed"]),
    ("MACS", lambda m: ",".join(n["mac"] for n in m["nics"])),
    ("LABELS", lambda m: ",".join(f"{k}={v}" for k, v in m["labels"].items())),
    ("BMC", lambda m: m["bmc"] and f"{m['bmc']['driver']}://{m['bmc']['address']}"),
]
EVENT_COLUMNS = [
    ("TIME", lambda e: e["created_at"]),
    ("MACHINE", lambda e: e["machine_name"]),
    ("KIND", lambda e: e["kind"]),
    ("ACTOR", lambda e: e["actor"]),
    ("MESSAGE", lambda e: e["message"]),
]


def _labels(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"label {item!r} must be KEY=VALUE")
        labels[key] = value
    return labels


def _bmc(
    driver: str | None,
    address: str | None,
    username: str | None,
    password_file: str | None,
    insecure: bool,
) -> dict[str, Any] | None:
    if address is None:
        return None
    bmc: dict[str, Any] = {
        "driver": driver or "auto",
        "address": address,
        "username": username,
        "verify_tls": not insecure,
    }
    password = os.environ.get("BRONZE_BMC_PASSWORD")
    if password_file:
        try:
            with open(password_file) as fh:
                password = fh.read().rstrip("\n")
        except OSError as exc:
            fail(f"cannot read {password_file}: {exc.strerror}")
    if password is not None:
        bmc["password"] = password
    return bmc


def _nic(spec: str) -> dict[str, str]:
    """``MAC`` or ``MAC@IP``; the server validates both."""
    mac, sep, ip = spec.partition("@")
    return {"mac": mac, "ip": ip} if sep else {"mac": mac}


@machines_app.command("list")
def machines_list(
    selector: Annotated[
        str | None, typer.Option("-l", "--selector", help="rack=r1,role in (a,b),!x")
    ] = None,
    phase: Annotated[str | None, typer.Option("--phase")] = None,
    sort: Annotated[
        str, typer.Option("--sort", help="name, created_at, updated_at, phase; '-' = desc")
    ] = "name",
    limit: Annotated[
        int | None, typer.Option("--limit", help="Stop after N machines (default: all).")
    ] = None,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    cl = client(url, token_file)
    params = {"selector": selector, "phase": phase, "sort": sort, "limit": min(limit or 500, 500)}
    try:
        items = cl.paginate("/api/v1/machines", params, limit)
    except ClientError as exc:
        fail(str(exc))
    show(items, output, MACHINE_COLUMNS)


@machines_app.command("show")
def machines_show(
    name: str, url: UrlOpt = None, token_file: TokenFileOpt = None, output: OutOpt = Output.json
) -> None:
    show(call(client(url, token_file), "GET", f"/api/v1/machines/{name}"), output, MACHINE_COLUMNS)


@machines_app.command("create")
def machines_create(
    name: str,
    mac: Annotated[
        list[str],
        typer.Option(
            "--mac", help="NIC as MAC or MAC@IP (reserved provisioning address); repeat for more."
        ),
    ],
    uuid: Annotated[str | None, typer.Option("--uuid", help="SMBIOS UUID.")] = None,
    serial: Annotated[str | None, typer.Option("--serial")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="KEY=VALUE (repeat).")] = None,
    bmc_driver: Annotated[
        str | None, typer.Option("--bmc-driver", help="redfish, ipmi, auto")
    ] = None,
    bmc_address: Annotated[str | None, typer.Option("--bmc-address", help="host[:port]")] = None,
    bmc_username: Annotated[str | None, typer.Option("--bmc-username")] = None,
    bmc_password_file: Annotated[
        str | None,
        typer.Option(
            "--bmc-password-file", help="File with the BMC password (or BRONZE_BMC_PASSWORD)."
        ),
    ] = None,
    bmc_insecure: Annotated[
        bool, typer.Option("--bmc-insecure", help="Do not verify BMC TLS (audited).")
    ] = False,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    body: dict[str, Any] = {
        "name": name,
        "nics": [_nic(m) for m in mac],
        "labels": _labels(label or []),
    }
    if uuid:
        body["uuid"] = uuid
    if serial:
        body["serial"] = serial
    bmc = _bmc(bmc_driver, bmc_address, bmc_username, bmc_password_file, bmc_insecure)
    if bmc:
        body["bmc"] = bmc
    show(
        call(client(url, token_file), "POST", "/api/v1/machines", json=body),
        output,
        MACHINE_COLUMNS,
    )


@machines_app.command("update")
def machines_update(
    name: str,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="Set KEY=VALUE (repeat).")
    ] = None,
    remove_label: Annotated[
        list[str] | None, typer.Option("--remove-label", help="Remove KEY.")
    ] = None,
    phase: Annotated[str | None, typer.Option("--phase")] = None,
    new_name: Annotated[str | None, typer.Option("--rename")] = None,
    mac: Annotated[
        list[str] | None, typer.Option("--mac", help="Replace the NIC list (MAC or MAC@IP).")
    ] = None,
    bmc_driver: Annotated[str | None, typer.Option("--bmc-driver")] = None,
    bmc_address: Annotated[str | None, typer.Option("--bmc-address")] = None,
    bmc_username: Annotated[str | None, typer.Option("--bmc-username")] = None,
    bmc_password_file: Annotated[str | None, typer.Option("--bmc-password-file")] = None,
    bmc_insecure: Annotated[bool, typer.Option("--bmc-insecure")] = False,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    body: dict[str, Any] = {}
    labels: dict[str, Any] = {**_labels(label or []), **{k: None for k in remove_label or []}}
    if labels:
        body["labels"] = labels
    if phase:
        body["phase"] = phase
    if new_name:
        body["name"] = new_name
    if mac:
        body["nics"] = [_nic(m) for m in mac]
    bmc = _bmc(bmc_driver, bmc_address, bmc_username, bmc_password_file, bmc_insecure)
    if bmc:
        body["bmc"] = bmc
    if not body:
        fail("nothing to update")
    show(
        call(client(url, token_file), "PATCH", f"/api/v1/machines/{name}", json=body),
        output,
        MACHINE_COLUMNS,
    )


@machines_app.command("delete")
def machines_delete(name: str, url: UrlOpt = None, token_file: TokenFileOpt = None) -> None:
    call(client(url, token_file), "DELETE", f"/api/v1/machines/{name}")
    typer.echo(f"deleted {name}")


TIMELINE_COLUMNS = [
    ("TIME", lambda e: e["at"]),
    ("MAC", lambda e: e["mac"]),
    ("STEP", lambda e: e["kind"]),
    ("CLIENT", lambda e: e["client"]),
    ("DETAIL", lambda e: " ".join(f"{k}={v}" for k, v in e["detail"].items() if v is not None)),
]


@machines_app.command("timeline")
def machines_timeline(
    name: Annotated[
        str, typer.Argument(help="Machine name or id, or a MAC (also unknown machines).")
    ],
    limit: Annotated[int, typer.Option("--limit")] = 200,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Network-boot steps (DHCP, TFTP, script, kernel, initrd), oldest first: where a boot stopped."""
    from server.inventory.validation import normalize_mac

    try:
        path, params = "/api/v1/boot/timeline", {"mac": normalize_mac(name), "limit": limit}
    except ValueError:
        path, params = f"/api/v1/machines/{name}/timeline", {"limit": limit}
    show(
        call(client(url, token_file), "GET", path, params=params)["items"], output, TIMELINE_COLUMNS
    )


@machines_app.command("events")
def machines_events(
    name: str,
    limit: Annotated[int, typer.Option("--limit")] = 50,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    data = call(
        client(url, token_file), "GET", f"/api/v1/machines/{name}/events", params={"limit": limit}
    )
    show(data["items"], output, EVENT_COLUMNS)


# --- power ------------------------------------------------------------------------------------------

OP_COLUMNS = [
    ("MACHINE", lambda i: i["machine"]),
    ("STATUS", lambda i: i["status"]),
    ("STATE", lambda i: i["result"].get("state")),
    ("ATTEMPTS", lambda i: i["result"].get("attempts")),
    ("ERROR", lambda i: i["error"]),
]


def _wait(cl: Client, op: dict[str, Any], timeout: float) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout
    while op["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.5)
        op = call(cl, "GET", f"/api/v1/operations/{op['id']}")
    return op


def _report(ops: list[dict[str, Any]], output: Output) -> None:
    if output is Output.json:
        typer.echo(json.dumps(ops, indent=2))
    else:
        show([i for op in ops for i in op["items"]], output, OP_COLUMNS)
    if any(op["status"] != "succeeded" for op in ops):
        raise typer.Exit(1)


@app.command("power")
def power_cmd(
    action: Annotated[str, typer.Argument(help="on, off, soft-off, cycle, reset or status")],
    names: Annotated[list[str] | None, typer.Argument(help="Machine names or ids.")] = None,
    selector: Annotated[
        str | None, typer.Option("-l", "--selector", help="Instead of names.")
    ] = None,
    max_parallel: Annotated[int, typer.Option("--max-parallel")] = 32,
    stagger_ms: Annotated[
        int, typer.Option("--stagger-ms", help="Gap between machine starts.")
    ] = 0,
    wait: Annotated[bool, typer.Option("--wait/--no-wait")] = True,
    timeout: Annotated[float, typer.Option("--timeout")] = 600,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Power machines (verified by read-back) or read their state from the BMC."""
    if bool(names) == bool(selector):
        fail("give machine names or --selector, not both")
    cl = client(url, token_file)
    if action == "status":
        if selector:
            try:
                names = [
                    m["name"]
                    for m in cl.paginate(
                        "/api/v1/machines", {"selector": selector, "limit": 500}, None
                    )
                ]
            except ClientError as exc:
                fail(str(exc))
        rows = [call(cl, "GET", f"/api/v1/machines/{n}/power") for n in names or []]
        show(
            rows,
            output,
            [
                ("MACHINE", lambda r: r["machine"]),
                ("POWER", lambda r: r["state"]),
                ("ERROR", lambda r: r["error"]),
            ],
        )
        if any(r["error"] for r in rows):
            raise typer.Exit(1)
        return
    if selector:
        ops = [
            call(
                cl,
                "POST",
                "/api/v1/power",
                json={
                    "selector": selector,
                    "action": action,
                    "max_parallel": max_parallel,
                    "stagger_ms": stagger_ms,
                },
            )
        ]
    else:
        ops = [
            call(cl, "POST", f"/api/v1/machines/{n}/power", json={"action": action})
            for n in names or []
        ]
    if wait:
        ops = [_wait(cl, op, timeout) for op in ops]
    _report(ops, output)


@boot_app.command("set")
def boot_device_set(
    names: Annotated[list[str], typer.Argument(help="Machine names or ids.")],
    device: Annotated[str, typer.Option("--device", help="pxe, disk, bios or cdrom")] = "pxe",
    persistent: Annotated[bool, typer.Option("--persistent/--once")] = False,
    uefi: Annotated[bool, typer.Option("--uefi/--legacy")] = True,
    wait: Annotated[bool, typer.Option("--wait/--no-wait")] = True,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Set the next (or every) boot device."""
    cl = client(url, token_file)
    body = {"device": device, "persistent": persistent, "uefi": uefi}
    ops = [call(cl, "PUT", f"/api/v1/machines/{n}/boot-device", json=body) for n in names]
    if wait:
        ops = [_wait(cl, op, 600) for op in ops]
    _report(ops, output)


@app.command("pxe")
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
    """Run the boot plane (DHCP + TFTP) alone, asking SERVER what to boot (BRONZE_PXE_* settings)."""
    import asyncio
    import logging

    from pxe import PxeSettings
    from server.boot import remote

    if token is not None:
        fail(
            "tokens are never taken from argv (other users can read it in ps); "
            "use --token-file or BRONZE_PXE_TOKEN, and rotate the token you just passed"
        )
    settings = PxeSettings(server_url=server)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    secret = settings.token.get_secret_value() if settings.token else None
    if token_file:
        try:
            with open(token_file) as fh:
                secret = fh.read().strip()
        except OSError as exc:
            fail(f"cannot read {token_file}: {exc.strerror}")
    if not secret:
        fail("no token: use --token-file or BRONZE_PXE_TOKEN (a token of role boot)")
    try:
        asyncio.run(remote.run(settings, server, secret))
    except OSError as exc:
        fail(f"cannot start the boot plane: {exc}")


# `bronze node`: its own module (server/cli/node.py), which uses the helpers above.
from server.cli.node import node as node_cmd  # noqa: E402

app.command("node")(node_cmd)


def main() -> None:  # pragma: no cover - console script shim
    sys.exit(app())
