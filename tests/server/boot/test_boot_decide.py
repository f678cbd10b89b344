"""Pure decisions of the boot plane's server side, as tables."""

from __future__ import annotations

import pytest

from pxe import BootAction, BootDecision, UnsafeValue
from server.boot import profiles
from server.boot.assets import AssetError, ByteRange, Unsatisfiable, check_name, parse_range
from server.boot.decide import (
    Candidate,
    ScriptKind,
    action_of,
    dhcp_decision,
    pick_profile,
    script_kind,
)
from server.inventory.selectors import parse
from server.types import Phase

P = Phase


@pytest.mark.parametrize(
    ("phase", "discovery", "kind"),
    [
        (None, True, ScriptKind.DISCOVERY),
        (None, False, ScriptKind.NONE),
        (P.DISCOVERED, True, ScriptKind.DISCOVERY),
        (P.DISCOVERED, False, ScriptKind.NONE),
        (P.REGISTERED, False, ScriptKind.PROFILE),
        (P.PROVISIONING, True, ScriptKind.PROFILE),
        (P.READY, True, ScriptKind.DISK),
        (P.UPGRADING, True, ScriptKind.DISK),
        (P.MAINTENANCE, True, ScriptKind.NONE),
        (P.FAILED, True, ScriptKind.NONE),
    ],
    ids=lambda v: str(v),
)
def test_script_kind(phase: Phase | None, discovery: bool, kind: ScriptKind) -> None:
    assert script_kind(phase, discovery) is kind


def test_actions() -> None:
    assert [action_of(k) for k in ScriptKind] == [
        BootAction.PROFILE,
        BootAction.PROFILE,
        BootAction.DISK,
        BootAction.NONE,
    ]


@pytest.mark.parametrize(
    ("phase", "discovery", "decision"),
    [
        (None, False, BootDecision(known=False, allow_boot=False)),
        (None, True, BootDecision(known=False, allow_boot=True)),
        (P.REGISTERED, False, BootDecision(known=True, allow_boot=True, hostname="n1")),
        (P.READY, False, BootDecision(known=True, allow_boot=True, hostname="n1")),
        (P.MAINTENANCE, True, BootDecision(known=True, allow_boot=False, hostname="n1")),
        (P.FAILED, True, BootDecision(known=True, allow_boot=False, hostname="n1")),
        (P.DISCOVERED, True, BootDecision(known=True, allow_boot=True, hostname="n1")),
        (P.DISCOVERED, False, BootDecision(known=True, allow_boot=False, hostname="n1")),
    ],
    ids=[
        "unknown",
        "unknown-discovery",
        "registered",
        "ready",
        "maintenance",
        "failed",
        "discovered",
        "discovered-discovery-off",
    ],
)
def test_dhcp_decision(phase: Phase | None, discovery: bool, decision: BootDecision) -> None:
    assert dhcp_decision(phase, discovery, "n1" if phase else None) == decision


PROFILES = [
    Candidate("any", parse("")),
    Candidate("workers", parse("role=worker")),
    Candidate("r1-workers", parse("role=worker,rack in (r1,r2)")),
    Candidate("r1-workers-b", parse("role=worker,rack=r1")),
    Candidate("no-gpu", parse("!gpu,role=storage")),
    Candidate("discovery", parse("role=worker,rack=r1,x=y")),
]


@pytest.mark.parametrize(
    ("labels", "chosen"),
    [
        ({}, "any"),
        ({"role": "worker"}, "workers"),
        ({"role": "worker", "rack": "r2"}, "r1-workers"),
        ({"role": "worker", "rack": "r1"}, "r1-workers"),  # tie of two requirements: smallest name
        (
            {"role": "worker", "rack": "r1", "x": "y"},
            "r1-workers",
        ),  # the discovery profile is excluded
        ({"role": "storage"}, "no-gpu"),
        ({"role": "storage", "gpu": "a100"}, "any"),
    ],
    ids=["empty", "one", "set-based", "tie", "discovery-excluded", "not-exists", "fallback"],
)
def test_pick_profile(labels: dict[str, str], chosen: str) -> None:
    assert pick_profile(PROFILES, labels, exclude="discovery") == chosen


def test_pick_profile_none() -> None:
    assert pick_profile([Candidate("w", parse("role=worker"))], {"role": "db"}) is None


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, ByteRange(0, 9)),
        ("bytes=90-", 100, ByteRange(90, 99)),
        ("bytes=90-1000", 100, ByteRange(90, 99)),
        ("bytes=-10", 100, ByteRange(90, 99)),
        ("bytes=-1000", 100, ByteRange(0, 99)),
        ("bytes=99-99", 100, ByteRange(99, 99)),
        ("bytes= 5 - 6", 100, ByteRange(5, 6)),
        ("bytes=9-0", 100, None),  # invalid: ignored, whole file
        ("bytes=0-1,5-6", 100, None),  # several ranges: ignored (RFC 9110 allows it)
        ("items=0-1", 100, None),
        ("bytes=", 100, None),
        ("bytes=-", 100, None),
        ("bytes=a-b", 100, None),
        ("bytes=" + "9" * 30 + "-", 100, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=100-", 100),
        ("bytes=100-200", 100),
        ("bytes=-0", 100),
        ("bytes=0-", 0),
        ("bytes=-5", 0),
    ],
)
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)


HOSTILE = [
    "..",
    ".",
    "../etc/passwd",
    "a/b",
    "a\\b",
    ".hidden",
    "-rf",
    "a..b",
    "",
    "x" * 129,
    "nul\x00",
    "sp ace",
    "é",
    "a%2fb",
    "semi;colon",
    "${server}",
    "new\nline",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_asset_names(name: str) -> None:
    with pytest.raises(AssetError):
        check_name(name)


@pytest.mark.parametrize("name", ["vmlinuz", "initrd.img", "agent-6.1_x86-64.cpio.zst", "A" * 128])
def test_good_asset_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    ("ref", "resolved"),
    [
        ("vmlinuz", "${server}/assets/vmlinuz"),
        ("http://10.0.0.1/k", "http://10.0.0.1/k"),
        ("https://mirror.example/k", "https://mirror.example/k"),
        ("${server}/assets/k", "${server}/assets/k"),
    ],
)
def test_resolve_refs(ref: str, resolved: str) -> None:
    assert profiles.resolve("kernel", ref) == resolved


@pytest.mark.parametrize("ref", ["../k", "/etc/k", "ftp://x/k", "a/b", "tftp://x/k"])
def test_resolve_refuses(ref: str) -> None:
    with pytest.raises(UnsafeValue) as exc:
        profiles.resolve("kernel", ref)
    assert exc.value.field == "kernel"


@pytest.mark.parametrize(
    ("phase", "kind"),
    [
        (P.REGISTERED, ScriptKind.PROFILE),
        (P.READY, ScriptKind.PROFILE),
        (P.UPGRADING, ScriptKind.PROFILE),
        (P.MAINTENANCE, ScriptKind.NONE),
        (P.FAILED, ScriptKind.NONE),
    ],
    ids=lambda v: str(v),
)
def test_script_kind_diskless(phase: Phase, kind: ScriptKind) -> None:
    """A diskless machine boots its profile where others boot their disk, nothing more."""
    assert script_kind(phase, False, netboot=True) is kind


def test_an_installed_machine_boots_its_disk_while_provisioning() -> None:
    """Provisioning set ``machines.image`` when the install answered: the reboot goes to the
    disk, not the installer again; a diskless machine keeps netbooting."""
    assert script_kind(P.PROVISIONING, False, installed=True) is ScriptKind.DISK
    assert script_kind(P.PROVISIONING, False, installed=False) is ScriptKind.PROFILE
    assert script_kind(P.PROVISIONING, False, netboot=True, installed=True) is ScriptKind.PROFILE
    assert script_kind(P.REGISTERED, False, installed=True) is ScriptKind.PROFILE
