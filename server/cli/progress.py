"""Waiting for operations (``/api/v1/operations/{id}``) and showing that we wait.

Three displays, chosen once: a ``rich`` progress bar per operation when stderr is a terminal;
plain lines on stderr (one each time an operation's count of finished machines changes) when it
is not, so a log or CI output shows progress without control characters; and nothing at all
with ``-o json``, whose stdout and stderr stay clean for scripts. Progress always goes to stderr:
stdout carries only the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from server.cli.client import Client
from server.cli.common import Output, call, err_console, stderr_is_tty

PENDING = ("queued", "running")
POLL_SECONDS = 0.5


def finished(op: dict[str, Any]) -> int:
    return sum(1 for i in op.get("items", []) if i.get("status") not in PENDING)


def describe(op: dict[str, Any]) -> str:
    total = len(op.get("items", []))
    return f"operation {op['id']} {op.get('action') or op.get('kind')}: {op['status']} " + (
        f"({finished(op)}/{total} machines done)"
    )


def wait_ops(
    cl: Client,
    ops: list[dict[str, Any]],
    timeout: float,
    output: Output,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict[str, Any]]:
    """Poll every operation until it leaves queued/running or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    if output is Output.json:
        return _poll(cl, ops, deadline, sleep, lambda _op: None)
    if stderr_is_tty():
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console(),
            transient=False,
        ) as bar:
            tasks = {
                op["id"]: bar.add_task(
                    f"{op.get('action') or op.get('kind')} {op['id'][:8]}",
                    total=len(op.get("items", [])) or 1,
                )
                for op in ops
            }

            def tick(op: dict[str, Any]) -> None:
                total = len(op.get("items", [])) or 1
                done = finished(op) if op["status"] in PENDING else total
                bar.update(tasks[op["id"]], completed=done, total=total)

            return _poll(cl, ops, deadline, sleep, tick)
    seen: dict[str, tuple[str, int]] = {}

    def line(op: dict[str, Any]) -> None:
        now = (op["status"], finished(op))
        if seen.get(op["id"]) != now:
            seen[op["id"]] = now
            err_console().print(describe(op), soft_wrap=True)

    return _poll(cl, ops, deadline, sleep, line)


@contextmanager
def waiting(what: str, output: Output) -> Iterator[None]:
    """Around one request that takes a while (``bronze machines inspect -l``: the server answers
    when every BMC was read): a rich spinner on a terminal, one plain line otherwise, nothing with
    ``-o json``; always on stderr."""
    if output is Output.json:
        yield
    elif stderr_is_tty():
        with err_console().status(what):
            yield
    else:
        err_console().print(what, soft_wrap=True)
        yield


def _poll(
    cl: Client,
    ops: list[dict[str, Any]],
    deadline: float,
    sleep: Callable[[float], None],
    report: Callable[[dict[str, Any]], None],
) -> list[dict[str, Any]]:
    for op in ops:
        report(op)
    while any(op["status"] in PENDING for op in ops) and time.monotonic() < deadline:
        sleep(POLL_SECONDS)
        ops = [
            call(cl, "GET", f"/api/v1/operations/{op['id']}") if op["status"] in PENDING else op
            for op in ops
        ]
        for op in ops:
            report(op)
    return ops
