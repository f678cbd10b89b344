"""Pure parts of registering a rack, as tables: manifest rows, accept rules, inspection rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bmc.inspection import Inspection, canonical_mac, canonical_uuid
from server.cli.manifest import ManifestError, csv_row, parse_csv, resolve_password
from server.inventory.accept_rules import AcceptRule, Identity, rule_between
from server.power.inspect import Recorded, reconcile

U1 = "27946b59-9e44-4fa7-8e91-f3527a1ef094"
U2 = "4c4c4544-0042-3510-8052-b4c04f4e3032"
M1, M2 = "52:54:00:00:00:01", "52:54:00:00:00:02"


@pytest.mark.parametrize(
    ("rec", "body"),
    [
        ({"name": "n1", "macs": M1}, {"name": "n1", "nics": [{"mac": M1}]}),
        (
            {"name": "n1", "macs": f"{M1}@10.0.0.1; {M2}", "labels": "rack=r1;role=w"},
            {
                "name": "n1",
                "nics": [{"mac": M1, "ip": "10.0.0.1"}, {"mac": M2}],
                "labels": {"rack": "r1", "role": "w"},
            },
        ),
        (
            {
                "name": "n1",
                "macs": M1,
                "bmc_address": "10.0.9.1",
                "bmc_port": "623",
                "bmc_driver": "ipmi",
                "bmc_password_env": "PW",
                "bmc_verify_tls": "no",
            },
            {
                "name": "n1",
                "nics": [{"mac": M1}],
                "bmc": {
                    "address": "10.0.9.1",
                    "port": 623,
                    "driver": "ipmi",
                    "password_env": "PW",
                    "verify_tls": False,
                },
            },
        ),
        (
            {"name": "n1", "macs": M1, "bmc_username": "admin"},
            {"name": "n1", "nics": [{"mac": M1}]},
        ),
    ],
    ids=["minimal", "ips-and-labels", "bmc", "bmc-fields-without-address-ignored"],
)
def test_csv_row(rec: dict[str, str], body: dict[str, Any]) -> None:
    assert csv_row(rec) == body


@pytest.mark.parametrize(
    ("rec", "error"),
    [
        ({"name": "n", "labels": "rack"}, "label 'rack' must be key=value"),
        ({"name": "n", "bmc_address": "a", "bmc_port": "x"}, "bmc_port 'x' is not a number"),
        ({"name": "n", "bmc_address": "a", "bmc_verify_tls": "maybe"}, "is not true or false"),
    ],
    ids=["label-without-value", "port-not-a-number", "bad-bool"],
)
def test_csv_row_errors(rec: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        csv_row(rec)


def test_csv_rows_are_numbered_by_line_and_header_checked() -> None:
    rows = parse_csv(f"name,macs\nn1,{M1}\n\nn2,{M2},extra\n")
    assert rows == [
        (2, {"name": "n1", "nics": [{"mac": M1}]}),
        (4, "more fields than the header names"),
    ]
    with pytest.raises(ManifestError, match="unknown: bmc_password"):
        parse_csv("name,macs,bmc_password\n")


@pytest.mark.parametrize(
    ("bmc", "env", "expect", "error"),
    [
        ({"address": "a", "password_file": "pw"}, {}, "from-file", None),
        ({"address": "a", "password_env": "PW"}, {"PW": "from-env"}, "from-env", None),
        ({"address": "a", "password_env": "NOPE"}, {}, None, "NOPE (BMC password) is not set"),
        ({"address": "a", "password": "x"}, {}, None, "write the BMC password in a file"),
        ({"address": "a", "password_file": "pw", "password_env": "PW"}, {}, None, "not both"),
        ({"address": "a", "password_file": "missing"}, {}, None, "cannot read"),
    ],
    ids=["file", "env", "env-missing", "inline-refused", "both", "file-missing"],
)
def test_resolve_password(
    tmp_path: Path, bmc: dict[str, Any], env: dict[str, str], expect: str | None, error: str | None
) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    body = {"bmc": dict(bmc)}
    got = resolve_password(body, tmp_path, env)
    if error is None:
        assert got is None and body["bmc"] == {"address": "a", "password": expect}
    else:
        assert got is not None and error in got


@pytest.mark.parametrize(
    ("discovered", "imported", "rule"),
    [
        (Identity("S1", U1, frozenset({M1})), Identity("S1", U2, frozenset()), AcceptRule.SERIAL),
        (Identity("S1", U1, frozenset({M1})), Identity("S2", U1, frozenset({M1})), AcceptRule.UUID),
        (
            Identity(None, None, frozenset({M1, M2})),
            Identity(None, U1, frozenset({M2})),
            AcceptRule.MAC,
        ),
        (Identity(None, None, frozenset({M1})), Identity(None, None, frozenset({M2})), None),
        (Identity(None, None, frozenset()), Identity(None, None, frozenset()), None),
    ],
    ids=["serial-first", "uuid-before-mac", "mac", "nothing-shared", "empty-never-matches"],
)
def test_accept_rule(discovered: Identity, imported: Identity, rule: AcceptRule | None) -> None:
    assert rule_between(discovered, imported) == rule


REC = Recorded(uuid=None, serial=None, macs=frozenset({M1}), hardware_facts=None)


@pytest.mark.parametrize(
    ("rec", "found", "changes", "conflicts"),
    [
        (
            REC,
            Inspection(uuid=U1, serial="S", macs=(M1, M2)),
            {"uuid": U1, "serial": "S", "nics": [M2], "hardware": "bmc_inspection"},
            [],
        ),
        (
            Recorded(U2, "S", frozenset({M1}), {}),
            Inspection(uuid=U1, serial="S"),
            {},
            [{"field": "uuid", "recorded": U2, "found": U1}],
        ),
        (
            Recorded(U1, "S", frozenset({M1}), {}),
            Inspection(uuid=U1, serial="T"),
            {},
            [{"field": "serial", "recorded": "S", "found": "T"}],
        ),
        (
            Recorded(None, None, frozenset(), {}, {M2: "other"}),
            Inspection(macs=(M2,)),
            {},
            [{"field": "mac", "recorded": "machine other", "found": M2}],
        ),
        (Recorded(U1, None, frozenset({M1}), {}), Inspection(uuid=U1, macs=(M1,)), {}, []),
        (Recorded(U1, None, frozenset({M1, M2}), {}), Inspection(macs=(M1,)), {}, []),
    ],
    ids=[
        "fills-empty",
        "uuid-conflict",
        "serial-conflict",
        "mac-of-another",
        "same-again-no-change",
        "missing-mac-not-a-conflict",
    ],
)
def test_reconcile(
    rec: Recorded, found: Inspection, changes: dict[str, Any], conflicts: list[dict[str, Any]]
) -> None:
    d = reconcile(rec, found)
    assert d.changes == changes and list(d.conflicts) == conflicts


@pytest.mark.parametrize(
    ("value", "uuid", "mac"),
    [
        (U1.upper(), U1, None),
        ("00000000-0000-0000-0000-000000000000", None, None),
        ("AA-BB-CC-00-00-01", None, "aa:bb:cc:00:00:01"),
        ("ff:ff:ff:ff:ff:ff", None, None),
        ("", None, None),
    ],
    ids=["uuid-upper", "uuid-zero", "mac-dashes", "mac-broadcast", "empty"],
)
def test_canonical(value: str, uuid: str | None, mac: str | None) -> None:
    assert canonical_uuid(value) == uuid and canonical_mac(value) == mac
