"""The console's pure shaping: which lane and label each netboot step and event gets, where it is
drawn on the time axis, and where a boot stopped."""

from __future__ import annotations

from typing import Any

import pytest

from server.ui import views


@pytest.mark.parametrize(
    ("item", "want"),
    [
        ({"kind": "DISCOVER", "detail": {"arch": "bios"}}, ("dhcp", "discover", False)),
        ({"kind": "NAK", "detail": {}}, ("dhcp", "nak", True)),
        (
            {"kind": "TFTP_START", "detail": {"file": "undionly.kpxe", "size": 2000}},
            ("tftp", "START undionly.kpxe (2,000 B)", False),
        ),
        (
            {"kind": "TFTP_COMPLETE", "detail": {"file": "ipxe.efi", "bytes": 1024, "size": 9}},
            ("tftp", "COMPLETE ipxe.efi (1,024 B)", False),
        ),
        (
            {"kind": "TFTP_ABORTED", "detail": {"file": "x", "bytes": 0}},
            ("tftp", "ABORTED x (0 B)", True),
        ),
        ({"kind": "SCRIPT", "detail": {"action": "profile"}}, ("http", "script: profile", False)),
        ({"kind": "KERNEL", "detail": {"bytes": 300000}}, ("http", "KERNEL (300,000 B)", False)),
        ({"kind": "INITRD", "detail": {"bytes": 7}}, ("http", "INITRD (7 B)", False)),
        ({"kind": "SOMETHING_ELSE", "detail": {}}, None),
    ],
    ids=["discover", "nak", "tftp-start", "tftp-complete", "tftp-aborted", "script", "kernel",
         "initrd", "unknown"],
)  # fmt: skip
def test_boot_steps(item: dict[str, Any], want: tuple[str, str, bool] | None) -> None:
    got = views.boot_step(item)
    assert (got[:3] if got else None) == want


@pytest.mark.parametrize(
    ("kind", "data", "want"),
    [
        ("rollout.machine.step", {"step": "reboot"}, ("lifecycle", "upgrade step reboot", False)),
        ("rollout.machine.step", {}, ("lifecycle", "upgrade step", False)),
        ("rollout.machine.failed", {}, ("lifecycle", "upgrade failed", True)),
        (
            "machine.updated",
            {"phase": {"from": "registered", "to": "provisioning"}},
            ("lifecycle", "phase provisioning", False),
        ),
        (
            "machine.updated",
            {"phase": {"from": "provisioning", "to": "failed"}},
            ("lifecycle", "phase failed", True),
        ),
        ("machine.updated", {"labels": {"a": "b"}}, None),
        ("agent.trouble", {}, ("agent", "trouble", True)),
        ("agent.enroll.pending", {}, ("agent", "enroll.pending", False)),
        ("agent.token.issued", {}, None),
        ("power.succeeded", {}, None),
    ],
)
def test_event_steps(kind: str, data: dict[str, Any], want: tuple[str, str, bool] | None) -> None:
    got = views.event_step({"kind": kind, "message": "m", "data": data})
    assert (got[:3] if got else None) == want


def test_timeline_places_marks_in_time_order_on_their_lanes() -> None:
    items = [
        {"at": "2026-01-01T00:00:10Z", "kind": "KERNEL", "detail": {"bytes": 5}},
        {"at": "2026-01-01T00:00:00Z", "kind": "DISCOVER", "detail": {}},
        {"at": "2026-01-01T00:00:05Z", "kind": "TFTP_COMPLETE", "detail": {"file": "f"}},
    ]
    events = [{"created_at": "2026-01-01T00:00:20Z", "kind": "rollout.machine.step"}]
    agent = {"hello_at": "2026-01-01T00:00:15Z", "agent_version": "1.2"}
    tl = views.timeline(items, events, agent)
    assert [(m.lane, m.x) for m in tl.marks] == [
        ("dhcp", views.LEFT),
        ("tftp", 387.5),
        ("http", 585.0),
        ("agent", 782.5),
        ("lifecycle", 980.0),
    ]
    lanes = {key: y for key, _, y in tl.lanes}
    assert all(m.y == lanes[m.lane] for m in tl.marks)
    assert tl.first == "2026-01-01T00:00:00Z" and tl.last == "2026-01-01T00:00:20Z"
    assert tl.last_step == "phase / upgrade: upgrade step"


def test_timeline_of_nothing_and_of_one_instant() -> None:
    empty = views.timeline([], [], None)
    assert empty.marks == () and empty.last_step is None and len(empty.lanes) == 5
    one = views.timeline([{"at": "2026-01-01T00:00:00Z", "kind": "OFFER", "detail": {}}], [], {})
    assert [m.x for m in one.marks] == [views.LEFT] and one.last_step == "DHCP: offer"


@pytest.mark.parametrize(
    ("statuses", "want"),
    [([], (0, 0)), (["queued", "running"], (0, 2)), (["succeeded", "failed", "running"], (2, 3))],
)
def test_operation_progress(statuses: list[str], want: tuple[int, int]) -> None:
    assert views.progress({"items": [{"status": s} for s in statuses]}) == want


def test_every_console_file_ships_in_the_package() -> None:
    """Templates and static files are package data: a wheel without them serves 500s."""
    import fnmatch
    import tomllib

    from tests.support.paths import ROOT

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["server"]
    ui = ROOT / "server" / "ui"
    files = [
        p.relative_to(ROOT / "server").as_posix()
        for d in ("templates", "static")
        for p in (ui / d).rglob("*")
        if p.is_file()
    ]
    assert len(files) > 20
    # setuptools' "*" does not cross "/": fnmatch with the same rule per path segment count.
    missing = [
        f
        for f in files
        if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)
    ]
    assert missing == []
