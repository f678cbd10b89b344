"""``server.boot.plan``: the whole ``/boot.ipxe`` decision as tables (no I/O)."""

from __future__ import annotations

import pytest

from pxe import BootAction
from server.agents.dbstore import ENROLLMENT_PHASES
from server.boot.decide import Candidate, ScriptKind
from server.boot.plan import (
    MachineView,
    NoToken,
    PlannedEvent,
    ProfileView,
    ScriptQuery,
    SeenLease,
    TokenBinding,
    needs_discovery,
    plan_script,
    token_binding,
)
from server.boot.seen import ZERO, lease_of
from server.boot.timeline import HttpKind
from server.inventory.selectors import parse
from server.types import Phase

IP, OTHER = "10.0.0.5", "10.0.0.66"
Q = ScriptQuery("52:54:00:00:00:01", IP, "bios", "00001234")
PROFILES = [
    ProfileView("discovery", agent=True, uses_token=False),
    ProfileView("workers", agent=False, uses_token=False),
    ProfileView("enroll", agent=False, uses_token=True),
]
CANDIDATES = [
    Candidate("discovery", parse("")),
    Candidate("workers", parse("role=worker")),
    Candidate("enroll", parse("role=enroll")),
]
LEASE = SeenLease("00001234", IP)


def m(phase: Phase, ip: str | None = None, **labels: str) -> MachineView:
    return MachineView("id-1", "n1", phase, labels, ip)


# (id, query, machine, discovery, outcome, lease) -> (kind, profile, token, agent args, reason)
CASES = [
    ("unknown_off", Q, None, False, None, None, ScriptKind.NONE, None, None, False, None),
    (
        "discovered_now",
        Q,
        m(Phase.DISCOVERED),
        True,
        "discovered",
        LEASE,
        ScriptKind.DISCOVERY,
        "discovery",
        TokenBinding("00001234", IP),
        True,
        None,
    ),
    (
        "discovery_rate_limited",
        Q,
        None,
        True,
        "discovery_rate_limited",
        LEASE,
        ScriptKind.NONE,
        None,
        None,
        False,
        "discovery_rate_limited",
    ),
    (
        "raced_known_worker",
        Q,
        m(Phase.REGISTERED, role="worker"),
        True,
        "known",
        None,
        ScriptKind.PROFILE,
        "workers",
        None,
        False,
        None,
    ),
    (
        "no_profile_matches",
        Q,
        m(Phase.PROVISIONING, role="db"),
        True,
        None,
        None,
        ScriptKind.NONE,
        None,
        None,
        False,
        "no_profile_matches",
    ),
    ("ready_disk", Q, m(Phase.READY), True, None, LEASE, ScriptKind.DISK, None, None, False, None),
    (
        "maintenance_exit",
        Q,
        m(Phase.MAINTENANCE, role="worker"),
        True,
        None,
        LEASE,
        ScriptKind.NONE,
        None,
        None,
        False,
        None,
    ),
    (
        "token_arg_reserved_ip",
        ScriptQuery("52:54:00:00:00:01", IP, None, None),
        m(Phase.PROVISIONING, IP, role="enroll"),
        False,
        None,
        None,
        ScriptKind.PROFILE,
        "enroll",
        TokenBinding("reserved", IP),
        False,
        None,
    ),
    (
        "thief_other_address",
        ScriptQuery("52:54:00:00:00:01", OTHER, None, "00001234"),
        m(Phase.DISCOVERED),
        True,
        None,
        LEASE,
        ScriptKind.DISCOVERY,
        "discovery",
        None,
        False,
        "token_address_mismatch",
    ),
    (
        "thief_no_lease",
        Q,
        m(Phase.DISCOVERED),
        True,
        None,
        None,
        ScriptKind.DISCOVERY,
        "discovery",
        None,
        False,
        "token_no_known_address",
    ),
]


@pytest.mark.parametrize(
    (
        "query",
        "machine",
        "discovery",
        "outcome",
        "lease",
        "kind",
        "profile",
        "token",
        "agent",
        "why",
    ),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_plan_script(
    query: ScriptQuery,
    machine: MachineView | None,
    discovery: bool,
    outcome: str | None,
    lease: SeenLease | None,
    kind: ScriptKind,
    profile: str | None,
    token: TokenBinding | None,
    agent: bool,
    why: str | None,
) -> None:
    plan = plan_script(
        query,
        machine,
        discovery,
        outcome,
        PROFILES,
        CANDIDATES,
        discovery_profile="discovery",
        enrollment_phases=ENROLLMENT_PHASES,
        lease=lease,
    )
    assert (plan.kind, plan.profile, plan.token, plan.agent_args) == (kind, profile, token, agent)
    # only a boot DHCP has not reported yet is worth waiting for
    assert plan.wait_for_boot is (why == "token_no_known_address" and query.boot is not None)
    script = plan.events[-1]
    assert script.kind is HttpKind.SCRIPT and script.detail.get("reason") == why
    assert script.detail["action"] == plan.action.value
    if outcome == "discovered":
        assert plan.events[0] == PlannedEvent(HttpKind.DISCOVERED, {"machine": "n1"})
    else:
        assert len(plan.events) == 1


def test_plan_actions() -> None:
    plan = plan_script(
        Q, m(Phase.READY), True, None, PROFILES, CANDIDATES,
        discovery_profile="discovery", enrollment_phases=ENROLLMENT_PHASES,
    )  # fmt: skip
    assert plan.action is BootAction.DISK


@pytest.mark.parametrize(
    ("machine", "discovery", "want"),
    [(None, True, True), (None, False, False), (m(Phase.DISCOVERED), True, False)],
    ids=["unknown_on", "unknown_off", "known"],
)
def test_needs_discovery(machine: MachineView | None, discovery: bool, want: bool) -> None:
    assert needs_discovery(machine, discovery) is want


BINDINGS = [
    ("lease_match", Q, LEASE, None, TokenBinding("00001234", IP)),
    ("lease_no_boot_in_url", ScriptQuery("m", IP), LEASE, None, TokenBinding("00001234", IP)),
    ("lease_other_boot", ScriptQuery("m", IP, None, "ffff"), LEASE, None, NoToken.BOOT_MISMATCH),
    ("lease_other_ip", ScriptQuery("m", OTHER, None, "00001234"), LEASE, None,
     NoToken.ADDRESS_MISMATCH),
    ("proxy_lease_reserved", Q, SeenLease("00001234", None), IP, TokenBinding("00001234", IP)),
    ("proxy_lease_no_address", Q, SeenLease("00001234", None), None, NoToken.NO_KNOWN_ADDRESS),
    ("reserved_only", Q, None, IP, TokenBinding("00001234", IP)),
    ("reserved_other_ip", ScriptQuery("m", OTHER), None, IP, NoToken.ADDRESS_MISMATCH),
    ("nothing_known", Q, None, None, NoToken.NO_KNOWN_ADDRESS),
    ("no_client_ip", ScriptQuery("m", None), LEASE, None, NoToken.ADDRESS_MISMATCH),
]  # fmt: skip


@pytest.mark.parametrize(
    ("query", "lease", "reserved", "want"), [b[1:] for b in BINDINGS], ids=[b[0] for b in BINDINGS]
)
def test_token_binding(
    query: ScriptQuery, lease: SeenLease | None, reserved: str | None, want: object
) -> None:
    assert token_binding(query, lease, reserved) == want


URL = "http://10.0.0.1:8080/boot.ipxe?mac=52%3A54%3A00%3A00%3A00%3A01&arch=bios"
LEASES = [
    ("full_ack", "ACK", {"yiaddr": IP, "file": URL + "&boot=00001234"}, SeenLease("00001234", IP)),
    ("proxy_ack", "ACK", {"yiaddr": ZERO, "file": URL + "&boot=ab"}, SeenLease("ab", None)),
    ("full_offer", "OFFER", {"yiaddr": IP, "file": URL + "&boot=00001234"}, None),
    ("proxy_offer", "OFFER", {"yiaddr": ZERO, "file": URL + "&boot=ab"}, SeenLease("ab", None)),
    ("first_stage", "ACK", {"yiaddr": IP, "file": "undionly.kpxe"}, None),
    ("bad_boot", "ACK", {"yiaddr": IP, "file": URL + "&boot=XYZ"}, None),
    ("two_boots", "ACK", {"yiaddr": IP, "file": URL + "&boot=1&boot=2"}, None),
]


@pytest.mark.parametrize(
    ("kind", "detail", "want"), [c[1:] for c in LEASES], ids=[c[0] for c in LEASES]
)
def test_lease_of(kind: str, detail: dict[str, str], want: SeenLease | None) -> None:
    assert lease_of(kind, detail) == want


IMAGED = [
    ProfileView("workers", agent=True, uses_token=False, image="os-1"),
    ProfileView("plain", agent=True, uses_token=False),
]
IMAGED_CANDIDATES = [Candidate("workers", parse("role=worker")), Candidate("plain", parse(""))]


@pytest.mark.parametrize(
    ("machine", "kind", "image"),
    [
        (m(Phase.READY, IP, role="worker"), ScriptKind.DISK, None),
        (
            MachineView("id-1", "n1", Phase.READY, {"role": "worker"}, IP, True),
            ScriptKind.PROFILE,
            "os-1",
        ),
        (
            MachineView("id-1", "n1", Phase.UPGRADING, {"role": "worker"}, IP, True, "os-2"),
            ScriptKind.PROFILE,
            "os-2",
        ),
        (MachineView("id-1", "n1", Phase.READY, {}, IP, True, "os-2"), ScriptKind.PROFILE, "os-2"),
        (MachineView("id-1", "n1", Phase.READY, {}, IP, True), ScriptKind.PROFILE, None),
        (m(Phase.REGISTERED, IP, role="worker"), ScriptKind.PROFILE, "os-1"),
        (MachineView("id-1", "n1", Phase.FAILED, {}, IP, True, "os-2"), ScriptKind.NONE, None),
    ],
    ids=[
        "disk machine ready: its disk",
        "diskless ready: the profile's image",
        "diskless upgrading: its own (trial) image over the profile's",
        "diskless with its own image, plain profile",
        "diskless, no image anywhere: the profile's kernel",
        "disk machine registered: the profile's image (installer)",
        "diskless failed: nothing",
    ],
)
def test_served_image(machine: MachineView, kind: ScriptKind, image: str | None) -> None:
    plan = plan_script(
        Q,
        machine,
        False,
        None,
        IMAGED,
        IMAGED_CANDIDATES,
        discovery_profile="discovery",
        enrollment_phases=ENROLLMENT_PHASES,
        lease=LEASE,
    )
    assert (plan.kind, plan.image) == (kind, image)
    script = next(e for e in plan.events if e.kind is HttpKind.SCRIPT)
    assert script.detail.get("image") == image
    if kind is ScriptKind.PROFILE:  # diskless machines in ready/upgrading still enroll each boot
        assert plan.token == TokenBinding("00001234", IP)
