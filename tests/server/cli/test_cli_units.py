"""Pure decisions of the CLI and its neighbours, as tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer.main

from agent.main import TOKEN_ENV, bootstrap_token
from server.boot.remote import next_delay
from server.cli.client import ClientError
from server.cli.common import MIN_FOLD, Col, fit_columns, items_of
from server.cli.main import app
from server.cli.power import target_error

K = Col("K", str, key=True)
F = Col("F", str)
F1 = Col("F1", str, priority=1)


@pytest.mark.parametrize(
    ("cols", "widths", "available", "keep", "width"),
    [
        ([K, F], [17, 30], 80, [0, 1], 80),
        ([K, F], [17, 30], 27, [0, 1], 27),  # F folds to MIN_FOLD: 17 + 2 + 8
        ([K, F], [17, 30], 26, [0], 26),  # F cannot fold enough: dropped, K whole
        ([K, F, F1], [17, 5, 30], 30, [0, 1], 30),  # priority 1 goes first
        ([F, K, F], [30, 17, 30], 36, [0, 1], 36),  # then the rightmost
        ([K, K, F], [40, 40, 10], 80, [0, 1], 82),  # keys alone too wide: printed wider
    ],
    ids=["fits", "folds", "drops-free-text", "priority-first", "rightmost-first", "keys-overflow"],
)
def test_fit_columns(
    cols: list[Col], widths: list[int], available: int, keep: list[int], width: int
) -> None:
    assert MIN_FOLD == 8
    assert fit_columns(cols, widths, available) == (keep, width)


@pytest.mark.parametrize(
    ("names", "selector", "error"),
    [
        (None, None, "give machine names or --selector"),
        ([], None, "give machine names or --selector"),
        (["m1"], "rack=r1", "give machine names or --selector, not both"),
        (["m1"], None, None),
        (None, "rack=r1", None),
    ],
    ids=["neither", "empty-list", "both", "names", "selector"],
)
def test_power_target_error(names: list[str] | None, selector: str | None, error: str) -> None:
    assert target_error(names, selector) == error


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ([{"id": "a"}], ([{"id": "a"}], None)),
        ({"items": [{"id": "a"}], "next_cursor": "c1"}, ([{"id": "a"}], "c1")),
        ({"items": [], "next_cursor": None}, ([], None)),
    ],
    ids=["bare-array", "page-with-cursor", "last-page"],
)
def test_items_of_accepts_both_list_shapes(page: Any, expected: Any) -> None:
    assert items_of(page) == expected


def test_items_of_refuses_other_shapes() -> None:
    with pytest.raises(ClientError):
        items_of({"id": "x"})


@pytest.mark.parametrize(
    ("current", "ok", "expected"),
    [
        (0.5, True, 0.5),
        (0.5, False, 1.0),
        (32.0, False, 60.0),
        (60.0, False, 60.0),
        (60, True, 0.5),
    ],
    ids=["ok-stays", "fail-doubles", "capped", "stays-capped", "success-resets"],
)
def test_timeline_backoff(current: float, ok: bool, expected: float) -> None:
    assert next_delay(current, ok, 0.5, 60.0) == expected


@pytest.mark.parametrize(
    ("file_text", "env", "cmdline", "expected"),
    [
        ("brz_file\n", {TOKEN_ENV: "brz_env"}, "brz_cmd", "brz_file"),
        (None, {TOKEN_ENV: "brz_env"}, "brz_cmd", "brz_env"),
        (None, {}, "brz_cmd", "brz_cmd"),
        (None, {TOKEN_ENV: "  "}, "brz_cmd", "brz_cmd"),
    ],
    ids=["file-first", "env-second", "cmdline-last", "blank-env-ignored"],
)
def test_agent_bootstrap_token_sources(
    tmp_path: Path, file_text: str | None, env: dict[str, str], cmdline: str, expected: str
) -> None:
    path = None
    if file_text is not None:
        path = tmp_path / "token"
        path.write_text(file_text)
    assert bootstrap_token(path, env, cmdline) == expected


def _walk(cmd: Any, path: str = "bronze") -> list[tuple[str, str]]:
    found = [(path, (cmd.help or cmd.short_help or "").strip())]
    for name, sub in getattr(cmd, "commands", {}).items():
        found += _walk(sub, f"{path} {name}")
    return found


def test_every_command_has_a_help_line() -> None:
    commands = _walk(typer.main.get_command(app))
    assert len(commands) > 40
    missing = [path for path, text in commands if not text.splitlines()]
    assert missing == []


def test_no_import_cycle_between_cli_modules() -> None:
    """``server.cli.node`` no longer imports ``server.cli.main`` (which imports it)."""
    import ast

    import server.cli

    pkg = Path(server.cli.__file__).parent
    for module in pkg.glob("*.py"):
        if module.name == "main.py":
            continue
        tree = ast.parse(module.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "server.cli.main" not in imported, module.name


class _FakeOps:
    """The REST seam: each GET of the operation answers the next status."""

    def __init__(self, statuses: list[str]) -> None:
        self.statuses = iter(statuses)

    def request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        status = next(self.statuses)
        done = "succeeded" if status == "succeeded" else "running"
        return {"id": "op-1", "action": "on", "status": status, "items": [{"status": done}]}


@pytest.mark.parametrize(
    ("output", "lines"),
    [
        (
            "table",
            [
                "operation op-1 on: queued (0/1 machines done)",
                "operation op-1 on: running (0/1 machines done)",
                "operation op-1 on: succeeded (1/1 machines done)",
            ],
        ),
        ("json", []),
    ],
    ids=["plain-lines-off-a-terminal", "json-prints-nothing"],
)
def test_wait_progress_without_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    output: str,
    lines: list[str],
) -> None:
    from server.cli import progress
    from server.cli.common import Output

    monkeypatch.setattr(progress, "stderr_is_tty", lambda: False)
    op = {"id": "op-1", "action": "on", "status": "queued", "items": [{"status": "queued"}]}
    fake = _FakeOps(["running", "running", "succeeded"])
    done = progress.wait_ops(fake, [op], 60, Output(output), sleep=lambda _s: None)  # type: ignore[arg-type]
    assert done[0]["status"] == "succeeded"
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.splitlines() == lines


def test_wait_progress_on_a_terminal_draws_a_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from server.cli import progress
    from server.cli.common import Output

    screen = io.StringIO()
    term = Console(file=screen, force_terminal=True, width=100, color_system=None)
    monkeypatch.setattr(progress, "stderr_is_tty", lambda: True)
    monkeypatch.setattr(progress, "err_console", lambda: term)
    op = {"id": "op-1", "action": "on", "status": "queued", "items": [{"status": "queued"}]}
    fake = _FakeOps(["running", "succeeded"])
    done = progress.wait_ops(fake, [op], 60, Output.table, sleep=lambda _s: None)  # type: ignore[arg-type]
    assert done[0]["status"] == "succeeded"
    drawn = screen.getvalue()
    assert "on op-1" in drawn and "1/1" in drawn and "\x1b[" in drawn  # a live bar, redrawn


@pytest.mark.parametrize(
    ("tty", "output", "expected"),
    [(False, "table", "inspecting rack=r1 through the BMC...\n"), (False, "json", "")],
    ids=["plain-line", "json-nothing"],
)
def test_waiting_for_one_long_request(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tty: bool,
    output: str,
    expected: str,
) -> None:
    from server.cli import common, progress
    from server.cli.common import Output

    monkeypatch.setattr(progress, "stderr_is_tty", lambda: tty)
    monkeypatch.setattr(common, "_ERR", None)  # a console on this test's captured stderr
    with progress.waiting("inspecting rack=r1 through the BMC...", Output(output)):
        pass
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == expected
