"""``bronze node NAME[,NAME...] OP``: node operations through the server (``talosctl -n``).

Every node is asked in turn (``-f`` follows them all at once, one thread per node). A node that
fails gets one ``error: NAME: ...`` line on stderr while the others are still shown, and the
command then exits 1. Several nodes: each output line is prefixed with ``NAME: ``.
``-o json``: one JSON document (a list, one entry per node); with ``-f``, NDJSON lines
``{"node", "data"}``.
"""

from __future__ import annotations

import json
import queue
import signal
import threading
from enum import StrEnum
from typing import Annotated, Any

import typer

from server.cli.client import Client, ClientError
from server.cli.common import Col, OutOpt, Output, TokenFileOpt, UrlOpt, client, emit_json, show


class NodeOp(StrEnum):
    reboot = "reboot"
    dmesg = "dmesg"
    logs = "logs"
    stats = "stats"
    ps = "ps"
    services = "services"


STATS_COLUMNS = [
    Col("NODE", lambda r: r["node"], key=True),
    Col("UPTIME_S", lambda r: round(r["data"]["uptime_seconds"])),
    Col("LOAD", lambda r: " ".join(f"{x:g}" for x in r["data"]["load"])),
    Col("MEM_TOTAL_MIB", lambda r: r["data"]["memory_total_bytes"] // 2**20),
    Col("MEM_AVAIL_MIB", lambda r: r["data"]["memory_available_bytes"] // 2**20),
]
SERVICE_COLUMNS = [
    Col("NODE", lambda r: r["node"], key=True),
    Col("SERVICE", lambda r: r["name"], key=True),
    Col("STATE", lambda r: r.get("state")),
    Col("PID", lambda r: r.get("pid")),
]
REBOOT_COLUMNS = [
    Col("NODE", lambda r: r["node"], key=True),
    Col("COMMAND", lambda r: r["command_id"], key=True),
    Col("DELIVERY", lambda r: r["delivery"]),
    Col("CONNECTED", lambda r: r.get("connected")),
]


def _err(node: str, message: str) -> None:
    typer.echo(f"error: {node}: {message}", err=True)


def _print_text(node: str, text: str, prefix: bool) -> None:
    for line in text.splitlines():
        typer.echo(f"{node}: {line}" if prefix else line)


def _one(cl: Client, node: str, op: NodeOp, service: str, tail: int) -> dict[str, Any]:
    if op is NodeOp.reboot:
        r = cl.request("POST", f"/api/v1/machines/{node}/reboot")
        return {"node": node, **r}
    params: dict[str, Any] = {"tail_lines": tail}
    if service:
        params["service"] = service
    r = cl.request("GET", f"/api/v1/machines/{node}/node/{op.value}", params=params)
    if not r["ok"]:
        raise ClientError(r["error"] or "failed")
    out = {"node": node, "output": r["output"]}
    if "data" in r:
        out["data"] = r["data"]
    return out


def _follow(
    cl: Client, nodes: list[str], op: NodeOp, service: str, tail: int, output: Output
) -> bool:
    """Stream every node's log until they all end (or Ctrl-C). Returns whether all went well."""
    params: dict[str, Any] = {"follow": "true", "tail_lines": tail}
    if service:
        params["service"] = service
    lines: queue.Queue[tuple[str, dict[str, Any] | None]] = queue.Queue()

    def pump(node: str) -> None:
        try:
            for raw in cl.stream_lines(f"/api/v1/machines/{node}/node/{op.value}", params):
                lines.put((node, json.loads(raw)))
        except ClientError as exc:
            lines.put((node, {"error": {"message": str(exc)}}))
        finally:
            lines.put((node, None))

    for node in nodes:
        threading.Thread(target=pump, args=(node,), daemon=True).start()
    ok, running, prefix = True, len(nodes), len(nodes) > 1
    while running:
        node, doc = lines.get()
        if doc is None:
            running -= 1
        elif "error" in doc:
            ok = False
            _err(node, doc["error"]["message"])
        elif output is Output.json:
            typer.echo(json.dumps({"node": node, "data": doc["data"]}))
        else:
            typer.echo(
                ("".join(f"{node}: {ln}\n" for ln in doc["data"].splitlines()))
                if prefix
                else doc["data"],
                nl=False,
            )
    return ok


def _take_sigint() -> None:
    """Make Ctrl-C stop a follow, however this process was started.

    An ignored SIGINT is inherited across exec (a command started from a backgrounded shell,
    ``cmd &``, or by a CI runner gets it ignored), and Python then installs no
    ``KeyboardInterrupt`` handler: ``-f`` would stream until killed. Following is interactive
    and ends only by Ctrl-C, so it takes SIGINT back (exit code 130, as for a shell's Ctrl-C).
    """
    # NOTE: only the main thread may set handlers; the CLI's command runs there.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def node(
    names: Annotated[str, typer.Argument(help="NAME[,NAME...] (machine names or ids).")],
    op: Annotated[NodeOp, typer.Argument(help="reboot, dmesg, logs, stats, ps or services.")],
    service: Annotated[str, typer.Argument(help="logs: the service (default: syslog).")] = "",
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="logs/dmesg: keep streaming.")
    ] = False,
    tail: Annotated[int, typer.Option("--tail", help="logs/dmesg: only the last N lines.")] = 0,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Node operations through the server: readers may read, operators may reboot."""
    nodes = [n.strip() for n in names.split(",") if n.strip()]
    if not nodes:
        raise typer.BadParameter("give at least one node name")
    if service and op is not NodeOp.logs:
        raise typer.BadParameter("a SERVICE only goes with logs")
    if follow and op not in (NodeOp.logs, NodeOp.dmesg):
        raise typer.BadParameter("-f only goes with logs and dmesg")
    cl = client(url, token_file)
    if follow:
        _take_sigint()
        try:
            ok = _follow(cl, nodes, op, service, tail, output)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        raise typer.Exit(0 if ok else 1)
    results: list[dict[str, Any]] = []
    failed = False
    for n in nodes:
        try:
            results.append(_one(cl, n, op, service, tail))
        except ClientError as exc:
            failed = True
            _err(n, str(exc))
    if output is Output.json:
        emit_json(results)
    elif op is NodeOp.reboot:
        show(results, output, REBOOT_COLUMNS)
    elif op is NodeOp.stats:
        show(results, output, STATS_COLUMNS)
    elif op is NodeOp.services:
        rows = []
        for r in results:
            try:
                rows += [{"node": r["node"], **svc} for svc in json.loads(r["output"])]
            except (ValueError, TypeError):
                failed = True
                _err(r["node"], "services: the node's answer is not a JSON list")
        show(rows, output, SERVICE_COLUMNS)
    else:
        for r in results:
            _print_text(r["node"], r["output"], len(nodes) > 1)
    if failed:
        raise typer.Exit(1)
