"""``bronze upgrade``: rolling OS upgrades (``/api/v1/upgrades``).

``plan`` shows the batches without touching anything; ``start`` creates the rollout (and with
``--watch`` follows it); ``watch`` draws one progress bar per batch and a line per machine step
on a terminal, plain lines otherwise, and exits 1 unless the rollout succeeded.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from server.cli.client import Client
from server.cli.common import (
    Col,
    OutOpt,
    Output,
    TokenFileOpt,
    UrlOpt,
    call,
    client,
    emit_json,
    err_console,
    read_secret_file,
    show,
    stderr_is_tty,
)

app = typer.Typer(no_args_is_help=True, help="Rolling OS upgrades in batches, with rollback.")

TERMINAL = {"succeeded", "completed_with_failures", "failed", "aborted"}
ROLLOUT_COLUMNS = [
    Col("ID", lambda r: r["id"], key=True),
    Col("STATUS", lambda r: r["status"], key=True),
    Col("IMAGE", lambda r: r["image"], key=True),
    Col("PRESERVE", lambda r: r["preserve"]),
    Col("DONE", lambda r: _done(r)),
    Col("FAILED", lambda r: r["counts"]["failed"]),
    Col("SELECTOR", lambda r: r["selector"], priority=1),
    Col("REASON", lambda r: r["reason"] or r.get("waiting_for") or "", priority=2),
]
MACHINE_COLUMNS = [
    Col("BATCH", lambda m: m["batch"]),
    Col("MACHINE", lambda m: m["name"], key=True),
    Col("STATE", lambda m: m["state"], key=True),
    Col("STEP", lambda m: m["step"]),
    Col("ERROR", lambda m: m["error"] or "", priority=1),
]
PLAN_COLUMNS = [
    Col("BATCH", lambda b: b["index"], key=True),
    Col("KIND", lambda b: b["kind"], key=True),
    Col("DOMAIN", lambda b: b["domain"] or "-"),
    Col("MACHINES", lambda b: "\n".join(m["name"] for m in b["machines"]), key=True),
]

Image = Annotated[str, typer.Option("--image", help="Image name (bronze images list).")]
Selector = Annotated[str, typer.Option("-l", "--selector", help="Which machines (labels).")]
Preserve = Annotated[
    bool,
    typer.Option(
        "--preserve/--wipe-ephemeral",
        help="Keep EPHEMERAL (/var) byte for byte, or wipe it on the new image's first boot.",
    ),
]
BatchSize = Annotated[str, typer.Option("--batch-size", help="Machines per batch: N or N%.")]
MaxUnavailable = Annotated[
    str | None, typer.Option("--max-unavailable", help="Most machines away at once: N or N%.")
]
Domain = Annotated[
    str | None, typer.Option("--failure-domain", help="Label key; never two values at once.")
]
Canary = Annotated[
    str, typer.Option("--canary", help="Canaries first, alone: a count, or names (a,b).")
]
ControlPlane = Annotated[
    str, typer.Option("--control-plane", help="Selector of machines upgraded one at a time.")
]
Budget = Annotated[int, typer.Option("--failure-budget", help="Failures tolerated.")]
Health = Annotated[int, typer.Option("--health-timeout", help="Seconds to get healthy.")]
OnAbort = Annotated[str, typer.Option("--on-abort", help="finish or rollback in-flight ones.")]
HookBefore = Annotated[str | None, typer.Option("--hook-before", help="URL called before each.")]
HookAfter = Annotated[str | None, typer.Option("--hook-after", help="URL called after each.")]
HookSecret = Annotated[
    str | None, typer.Option("--hook-secret-file", help="HMAC key for the hooks (a file).")
]
Timeout = Annotated[float, typer.Option("--timeout", help="Seconds to watch at most.")]


def _done(r: dict[str, Any]) -> str:
    c = r["counts"]
    total = sum(c.values())
    return f"{c['succeeded'] + c['failed'] + c['skipped']}/{total}"


def _count(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _body(
    image: str,
    selector: str,
    preserve: bool,
    batch_size: str,
    max_unavailable: str | None,
    failure_domain: str | None,
    canary: str,
    control_plane: str,
    failure_budget: int,
    health_timeout: int,
    on_abort: str,
    hook_before: str | None,
    hook_after: str | None,
    hook_secret_file: str | None,
) -> dict[str, Any]:
    secret = read_secret_file(hook_secret_file) if hook_secret_file else None
    hooks = {
        when: {"url": u, **({"secret": secret} if secret else {})}
        for when, u in (("before", hook_before), ("after", hook_after))
        if u
    }
    return {
        "image": image,
        "selector": selector,
        "preserve": preserve,
        "batch_size": _count(batch_size),
        "max_unavailable": _count(max_unavailable) if max_unavailable else None,
        "failure_domain": failure_domain,
        "canary": int(canary) if canary.isdigit() else [c for c in canary.split(",") if c],
        "control_plane": control_plane,
        "failure_budget": failure_budget,
        "health_timeout_seconds": health_timeout,
        "on_abort": on_abort,
        "hooks": hooks,
    }


@app.command("plan")
def plan(
    image: Image,
    selector: Selector,
    preserve: Preserve,
    batch_size: BatchSize = "1",
    max_unavailable: MaxUnavailable = None,
    failure_domain: Domain = None,
    canary: Canary = "0",
    control_plane: ControlPlane = "role=control-plane",
    failure_budget: Budget = 0,
    health_timeout: Health = 600,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Show the batches an upgrade would run, in order, without touching anything."""
    body = _body(
        image,
        selector,
        preserve,
        batch_size,
        max_unavailable,
        failure_domain,
        canary,
        control_plane,
        failure_budget,
        health_timeout,
        "finish",
        None,
        None,
        None,
    )
    res = call(
        client(url, token_file), "POST", "/api/v1/upgrades", params={"dry_run": "true"}, json=body
    )
    if output is Output.json:
        emit_json(res)
        return
    typer.echo(f"image {res['image']}, preserve={res['preserve']}, {len(res['batches'])} batches")
    show(res["batches"], output, PLAN_COLUMNS)


@app.command("start")
def start(
    image: Image,
    selector: Selector,
    preserve: Preserve,
    batch_size: BatchSize = "1",
    max_unavailable: MaxUnavailable = None,
    failure_domain: Domain = None,
    canary: Canary = "0",
    control_plane: ControlPlane = "role=control-plane",
    failure_budget: Budget = 0,
    health_timeout: Health = 600,
    on_abort: OnAbort = "finish",
    hook_before: HookBefore = None,
    hook_after: HookAfter = None,
    hook_secret_file: HookSecret = None,
    watch_: Annotated[bool, typer.Option("--watch", help="Follow it until it ends.")] = False,
    timeout: Timeout = 86_400,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Start a rolling upgrade (preserve must be chosen: --preserve or --wipe-ephemeral)."""
    body = _body(
        image,
        selector,
        preserve,
        batch_size,
        max_unavailable,
        failure_domain,
        canary,
        control_plane,
        failure_budget,
        health_timeout,
        on_abort,
        hook_before,
        hook_after,
        hook_secret_file,
    )
    cl = client(url, token_file)
    r = call(cl, "POST", "/api/v1/upgrades", json=body)
    if not watch_:
        show([r], output, ROLLOUT_COLUMNS)
        return
    follow(cl, f"/api/v1/upgrades/{r['id']}", timeout, output)


def add_views(group: typer.Typer, base: str, noun: str, columns: list[Col], watch_doc: str) -> None:
    """``group status [ID]`` and ``group watch ID`` for the rollouts under ``base`` (upgrades and
    provisions alike), shown with ``columns`` and, for one rollout, its machines."""

    def status(
        rollout_id: str | None = typer.Argument(  # noqa: B008 - the help names the noun
            None, help=f"{noun.capitalize()} id; none: list them."
        ),
        url: UrlOpt = None,
        token_file: TokenFileOpt = None,
        output: OutOpt = Output.table,
    ) -> None:
        cl = client(url, token_file)
        if rollout_id is None:
            show(call(cl, "GET", base)["items"], output, columns)
            return
        r = call(cl, "GET", f"{base}/{rollout_id}")
        if output is Output.json:
            emit_json(r)
            return
        show([r], output, columns)
        show(_machines(r), output, MACHINE_COLUMNS)

    def watch(
        rollout_id: str,
        timeout: Timeout = 86_400,
        url: UrlOpt = None,
        token_file: TokenFileOpt = None,
        output: OutOpt = Output.table,
    ) -> None:
        follow(client(url, token_file), f"{base}/{rollout_id}", timeout, output)

    status.__doc__ = f"List {noun}s, or show one with every machine's state, step and error."
    watch.__doc__ = watch_doc
    group.command("status")(status)
    group.command("watch")(watch)


def add_controls(group: typer.Typer, base: str, docs: dict[str, str], columns: list[Col]) -> None:
    """``group VERB ID`` for each verb in ``docs``: ``POST {base}/{id}/{verb}``, shown with
    ``columns`` (rollout controls: upgrades and provisions alike)."""

    def control(verb: str):  # type: ignore[no-untyped-def]
        def command(
            rollout_id: str,
            url: UrlOpt = None,
            token_file: TokenFileOpt = None,
            output: OutOpt = Output.table,
        ) -> None:
            r = call(client(url, token_file), "POST", f"{base}/{rollout_id}/{verb}")
            show([r], output, columns)

        command.__doc__ = docs[verb]
        return command

    for verb in docs:
        group.command(verb)(control(verb))


add_views(
    app,
    "/api/v1/upgrades",
    "rollout",
    ROLLOUT_COLUMNS,
    "Follow a rollout until it ends; exit 1 unless it succeeded.",
)
add_controls(
    app,
    "/api/v1/upgrades",
    {
        "pause": "Start no more machines; machines in flight finish.",
        "resume": "Go on after a pause.",
        "abort": "Start no more machines; in-flight ones finish or roll back (--on-abort).",
    },
    ROLLOUT_COLUMNS,
)


def _machines(r: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**m, "batch": b["index"]} for b in r["batches"] for m in b["machines"]]


def follow(cl: Client, path: str, timeout: float, output: Output) -> None:
    """Poll the rollout at ``path`` until it ends (upgrades and provisions alike)."""
    deadline = time.monotonic() + timeout
    r = call(cl, "GET", path)
    if output is Output.json:
        while r["status"] not in TERMINAL and time.monotonic() < deadline:
            time.sleep(1.0)
            r = call(cl, "GET", path)
        emit_json(r)
    elif stderr_is_tty():
        with Live(_board(r), console=err_console(), refresh_per_second=4) as live:
            while r["status"] not in TERMINAL and time.monotonic() < deadline:
                time.sleep(0.5)
                r = call(cl, "GET", path)
                live.update(_board(r))
    else:
        seen: dict[str, tuple[str, str]] = {}
        _lines(r, seen)
        while r["status"] not in TERMINAL and time.monotonic() < deadline:
            time.sleep(1.0)
            r = call(cl, "GET", path)
            _lines(r, seen)
        typer.echo(
            f"rollout {r['id']}: {r['status']}" + (f" ({r['reason']})" if r["reason"] else ""),
            err=True,
        )
    if r["status"] != "succeeded":
        raise typer.Exit(1)


def _lines(r: dict[str, Any], seen: dict[str, tuple[str, str]]) -> None:
    for m in _machines(r):
        now = (m["state"], m["step"])
        if seen.get(m["id"]) != now:
            seen[m["id"]] = now
            err = f": {m['error']}" if m["error"] else ""
            typer.echo(f"batch {m['batch']} {m['name']}: {m['state']} {m['step']}{err}", err=True)


def _board(r: dict[str, Any]) -> Table:
    """One row per batch (a bar of its finished machines) and per machine in flight."""
    t = Table(
        title=f"{r['kind']} {r['id']} ({r['image']}): {r['status']} {r.get('waiting_for', '')}"
    )
    t.add_column("BATCH", no_wrap=True)
    t.add_column("PROGRESS", no_wrap=True)
    t.add_column("MACHINES")
    for b in r["batches"]:
        ms = b["machines"]
        done = sum(1 for m in ms if m["state"] in ("succeeded", "failed", "skipped"))
        width = 20
        filled = round(width * done / len(ms)) if ms else width
        bar = "#" * filled + "." * (width - filled) + f" {done}/{len(ms)}"
        detail = ", ".join(
            f"{m['name']} {m['step'] if m['state'] == 'active' else m['state']}" for m in ms
        )
        t.add_row(f"{b['index']} {b['kind']}", bar, detail)
    return t
