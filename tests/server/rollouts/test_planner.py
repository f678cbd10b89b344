"""Batch planning tables: canaries, control plane, failure domains, sizes."""

from __future__ import annotations

import pytest

from server.rollouts.planner import (
    Batch,
    BatchKind,
    BatchPolicy,
    Candidate,
    PlanError,
    plan_batches,
    resolve_count,
)


def fleet(spec: str) -> list[Candidate]:
    """``"w1:rack=a w2:rack=b,role=control-plane"`` -> candidates (id = name)."""
    out = []
    for item in spec.split():
        name, _, labels = item.partition(":")
        pairs = dict(p.split("=") for p in labels.split(",") if p)
        out.append(Candidate(id=name, name=name, labels=pairs))
    return out


def shape(batches: list[Batch]) -> list[str]:
    return [f"{b.kind.value}/{b.domain}:{','.join(b.machines)}" for b in batches]


CASES = [
    pytest.param("", BatchPolicy(batch_size=4), [], id="empty selection"),
    pytest.param(
        "n3 n1 n2 n4 n5",
        BatchPolicy(batch_size=2),
        ["regular/:n1,n2", "regular/:n3,n4", "regular/:n5"],
        id="by name, chunks of 2",
    ),
    pytest.param(
        " ".join(f"n{i:02}" for i in range(20)),
        BatchPolicy(batch_size="10%"),
        [f"regular/:n{i:02},n{i + 1:02}" for i in range(0, 20, 2)],
        id="10% of 20 is 2",
    ),
    pytest.param(
        "n1 n2 n3",
        BatchPolicy(batch_size="10%"),
        ["regular/:n1", "regular/:n2", "regular/:n3"],
        id="10% of 3 rounds up to 1",
    ),
    pytest.param(
        "n1 n2 n3 n4",
        BatchPolicy(batch_size=4, max_unavailable=3),
        ["regular/:n1,n2,n3", "regular/:n4"],
        id="max_unavailable caps the batch",
    ),
    pytest.param(
        "a1:rack=a a2:rack=a b1:rack=b a3:rack=a b2:rack=b",
        BatchPolicy(batch_size=5, failure_domain="rack"),
        ["regular/a:a1,a2,a3", "regular/b:b1,b2"],
        id="a batch never spans two racks",
    ),
    pytest.param(
        "a1:rack=a x1 b1:rack=b",
        BatchPolicy(batch_size=5, failure_domain="rack"),
        ["regular/:x1", "regular/a:a1", "regular/b:b1"],
        id="machines without the label are a domain of their own",
    ),
    pytest.param(
        "c1:role=control-plane c2:role=control-plane w1 w2 w3",
        BatchPolicy(batch_size=3),
        ["control-plane/:c1", "control-plane/:c2", "regular/:w1,w2,w3"],
        id="control plane one at a time, first",
    ),
    pytest.param(
        "c1:role=control-plane w1 w2 w3",
        BatchPolicy(batch_size=3, canary=1),
        ["canary/:w1", "control-plane/:c1", "regular/:w2,w3"],
        id="canary count picks a non control-plane machine",
    ),
    pytest.param(
        "w1 w2 w3",
        BatchPolicy(batch_size=3, canary=("w3", "w2")),
        ["canary/:w3", "canary/:w2", "regular/:w1"],
        id="named canaries in the given order, each alone",
    ),
    pytest.param(
        "c1:role=cp w1:role=control-plane",
        BatchPolicy(batch_size=2, control_plane="role=cp"),
        ["control-plane/:c1", "regular/:w1"],
        id="custom control-plane selector",
    ),
    pytest.param(
        "c1:role=control-plane w1",
        BatchPolicy(batch_size=2, control_plane=""),
        ["regular/:c1,w1"],
        id="no control plane when the selector is empty",
    ),
]


@pytest.mark.parametrize(("machines", "policy", "expected"), CASES)
def test_plan_batches(machines: str, policy: BatchPolicy, expected: list[str]) -> None:
    batches = plan_batches(fleet(machines), policy)
    assert shape(batches) == expected
    assert [b.index for b in batches] == list(range(len(batches)))
    planned = [m for b in batches for m in b.machines]
    assert sorted(planned) == sorted(c.id for c in fleet(machines)), "each machine exactly once"


def test_batch_kinds_are_the_declared_ones() -> None:
    kinds = {b.kind for b in plan_batches(fleet("c:role=control-plane a b"), BatchPolicy(canary=1))}
    assert kinds == {BatchKind.CANARY, BatchKind.CONTROL_PLANE, BatchKind.REGULAR}


@pytest.mark.parametrize(
    ("spec", "total", "expected"),
    [(1, 10, 1), (7, 3, 7), ("10%", 1000, 100), ("10%", 95, 10), ("1%", 5, 1), ("100%", 8, 8)],
    ids=["one", "more than total", "10% of 1000", "10% of 95 rounds up", "at least 1", "all"],
)
def test_resolve_count(spec: int | str, total: int, expected: int) -> None:
    assert resolve_count(spec, total, what="batch_size") == expected


@pytest.mark.parametrize(
    ("machines", "policy", "message"),
    [
        ("n1", BatchPolicy(batch_size=0), "batch_size must be at least 1"),
        ("n1", BatchPolicy(batch_size="0%"), "percentage"),
        ("n1", BatchPolicy(batch_size="10%\n"), "percentage"),
        ("n1", BatchPolicy(batch_size="ten"), "percentage"),
        ("n1", BatchPolicy(batch_size=True), "number or a percentage"),
        ("n1", BatchPolicy(max_unavailable=0), "max_unavailable must be at least 1"),
        ("n1", BatchPolicy(canary=("n9",)), "canary machines not in the selection: n9"),
        ("n1", BatchPolicy(canary=-1), "canary must be 0 or more"),
        ("n1", BatchPolicy(control_plane="role in ("), "control_plane selector"),
    ],
    ids=[
        "zero",
        "zero percent",
        "trailing newline",
        "words",
        "bool",
        "max_unavailable zero",
        "unknown canary",
        "negative canary",
        "bad selector",
    ],
)
def test_plan_errors(machines: str, policy: BatchPolicy, message: str) -> None:
    with pytest.raises(PlanError, match=message.replace("(", r"\(")):
        plan_batches(fleet(machines), policy)
