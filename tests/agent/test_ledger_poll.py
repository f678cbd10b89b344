"""The cross-replica poll's decisions (pure): which saved commands this replica sends now."""

from __future__ import annotations

import datetime as dt

import pytest

from server.agents.ledger import commands_to_send, machines_with_news
from server.agents.store import PendingCommand

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _pc(cid: str, kind: str = "reboot", at: int = 0) -> PendingCommand:
    return PendingCommand(cid, kind, b"", T0 + dt.timedelta(seconds=at))


@pytest.mark.parametrize(
    ("rows", "held", "known", "acked", "want"),
    [
        ([], {"m1"}, {}, set(), []),
        ([("m1", "c1")], {"m1"}, {}, set(), ["m1"]),
        ([("m1", "c1")], set(), {}, set(), []),
        ([("m1", "c1")], {"m1"}, {"m1": {"c1"}}, set(), []),
        ([("m1", "c1")], {"m1"}, {}, {"c1"}, []),
        ([("m1", "c1")], {"m1"}, {"m2": {"c1"}}, set(), ["m1"]),
        ([("m2", "c2"), ("m1", "c1"), ("m1", "c3")], {"m1", "m2"}, {}, set(), ["m1", "m2"]),
        ([("m1", "c1"), ("m1", "c2")], {"m1"}, {"m1": {"c1"}}, set(), ["m1"]),
    ],
    ids=[
        "nothing-saved",
        "new-command-for-held-machine",
        "machine-held-elsewhere",
        "already-sent-by-us",
        "already-acknowledged",
        "known-for-another-machine-only",
        "several-machines-sorted-once",
        "one-new-beside-a-known-one",
    ],
)
def test_machines_with_news(
    rows: list[tuple[str, str]],
    held: set[str],
    known: dict[str, set[str]],
    acked: set[str],
    want: list[str],
) -> None:
    assert machines_with_news(rows, held, known, acked) == want


@pytest.mark.parametrize(
    ("saved", "held", "known", "acked", "want"),
    [
        ({}, {"m1"}, {}, set(), []),
        ({"m1": [_pc("c1"), _pc("c2", at=1)]}, {"m1"}, {}, set(), [("m1", "c1"), ("m1", "c2")]),
        ({"m1": [_pc("c1")]}, set(), {}, set(), []),
        ({"m1": [_pc("c1"), _pc("c2", at=1)]}, {"m1"}, {"m1": {"c1"}}, set(), [("m1", "c2")]),
        ({"m1": [_pc("c1"), _pc("c2", at=1)]}, {"m1"}, {}, {"c2"}, [("m1", "c1")]),
        (
            {"m2": [_pc("c2")], "m1": [_pc("c1", "apply_config")]},
            {"m1", "m2"},
            {},
            set(),
            [("m1", "c1"), ("m2", "c2")],
        ),
        ({"m1": [_pc("c1")], "m2": [_pc("c2")]}, {"m2"}, {}, set(), [("m2", "c2")]),
    ],
    ids=[
        "nothing",
        "all-new-oldest-first",
        "session-gone-meanwhile",
        "skip-sent-by-us",
        "skip-acknowledged",
        "machines-in-order",
        "only-held-machines",
    ],
)
def test_commands_to_send(
    saved: dict[str, list[PendingCommand]],
    held: set[str],
    known: dict[str, set[str]],
    acked: set[str],
    want: list[tuple[str, str]],
) -> None:
    got = commands_to_send(saved, held, known, acked)
    assert [(mid, p.command_id) for mid, p in got] == want
