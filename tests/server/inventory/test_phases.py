"""The machine lifecycle: one transition table (server/inventory/phases.py), checked pair by pair,
and the REST answer to a refused change."""

from __future__ import annotations

import itertools

import pytest

from server.inventory.phases import allowed_targets, may_transition
from server.types import Phase
from tests.peers.apiserver import RunningServer

ALLOWED = {
    "discovered": "registered maintenance",
    "registered": "provisioning ready maintenance discovered",
    "provisioning": "ready failed registered maintenance",
    "ready": "upgrading provisioning registered maintenance discovered",
    "upgrading": "ready failed maintenance",
    "failed": "registered provisioning maintenance discovered",
    "maintenance": "registered provisioning ready discovered",
}
"""Written out here independently of the module, so a change to the table is a visible choice."""

PAIRS = list(itertools.product(Phase, Phase))


@pytest.mark.parametrize(("current", "target"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_transition_table(current: Phase, target: Phase) -> None:
    expected = current == target or target.value in ALLOWED[current.value].split()
    assert may_transition(current, target) is expected


@pytest.mark.parametrize("current", list(Phase), ids=str)
def test_allowed_targets_lists_exactly_the_edges(current: Phase) -> None:
    assert {p.value for p in allowed_targets(current)} == set(ALLOWED[current.value].split())


def test_every_phase_can_reach_maintenance_and_failed_never_becomes_ready() -> None:
    assert all(may_transition(p, Phase.MAINTENANCE) for p in Phase)
    assert not may_transition(Phase.FAILED, Phase.READY)


def test_patch_follows_the_lifecycle(api: RunningServer) -> None:
    c = api.client()
    r = c.post("/api/v1/machines", json={"name": "ph1", "nics": [{"mac": "02:00:00:00:0f:01"}]})
    assert r.status_code == 201, r.text
    for phase in ("provisioning", "failed"):
        r = c.patch("/api/v1/machines/ph1", json={"phase": phase})
        assert r.status_code == 200, r.text
    before = c.get("/api/v1/machines/ph1").json()["revision"]
    r = c.patch("/api/v1/machines/ph1", json={"phase": "ready"})
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "phase_transition"
    assert "from phase failed to ready" in err["message"]
    assert err["details"] == {
        "field": "phase",
        "from": "failed",
        "to": "ready",
        "allowed": ["discovered", "registered", "provisioning", "maintenance"],
    }
    m = c.get("/api/v1/machines/ph1").json()
    assert m["phase"] == "failed" and m["revision"] == before  # nothing written
    # The same phase again is a no-op, never refused; a retry path is open.
    assert c.patch("/api/v1/machines/ph1", json={"phase": "failed"}).status_code == 200
    assert c.patch("/api/v1/machines/ph1", json={"phase": "provisioning"}).status_code == 200
