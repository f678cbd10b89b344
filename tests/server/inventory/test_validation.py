"""Table tests for the pure validators and the label-selector language."""

from __future__ import annotations

import pytest

from server.inventory.selectors import Op, Requirement, SelectorError, matches, parse
from server.inventory.validation import (
    check_dns_label,
    check_label_key,
    check_label_value,
    normalize_mac,
)


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("AA:BB:CC:00:11:22", "aa:bb:cc:00:11:22"),
        ("aa-bb-cc-00-11-22", "aa:bb:cc:00:11:22"),
        ("aabb.cc00.1122", "aa:bb:cc:00:11:22"),
        ("AABBCC001122", "aa:bb:cc:00:11:22"),
        (" aa:bb:cc:00:11:22 ", "aa:bb:cc:00:11:22"),
    ],
    ids=["upper-colon", "dash", "cisco-dots", "bare-hex", "whitespace"],
)
def test_mac_spellings_normalise(raw: str, expected: str) -> None:
    assert normalize_mac(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "aa:bb:cc:00:11",
        "aa:bb:cc:00:11:zz",
        "aa:bb-cc:00:11:22",
        "aabbcc0011223",
        "00:00:00:00:00:00",
        "ff:ff:ff:ff:ff:ff",
        "aa:bb:cc:00:11:22;x",
    ],
    ids=["empty", "short", "non-hex", "mixed-separators", "long", "zero", "broadcast", "suffix"],
)
def test_bad_macs_rejected(raw: str) -> None:
    with pytest.raises(ValueError):
        normalize_mac(raw)


@pytest.mark.parametrize("name", ["n1", "worker-01", "a" * 63])
def test_good_names(name: str) -> None:
    assert check_dns_label(name) == name


@pytest.mark.parametrize("name", ["", "-a", "a-", "A1", "a_b", "a.b", "a" * 64, "a b", "a;reboot"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ValueError):
        check_dns_label(name)


@pytest.mark.parametrize("key", ["rack", "bronze.dev/role", "a.b-c_d", "x" * 63])
def test_good_label_keys(key: str) -> None:
    assert check_label_key(key) == key


@pytest.mark.parametrize("key", ["", "-x", "x" * 64, "Bad_Prefix/x", "a b", "a/", "${x}"])
def test_bad_label_keys(key: str) -> None:
    with pytest.raises(ValueError):
        check_label_key(key)


@pytest.mark.parametrize("value", ["", "v1", "a.b_c-d"])
def test_good_label_values(value: str) -> None:
    assert check_label_value(value) == value


@pytest.mark.parametrize("value", ["-x", "x" * 64, "a b", "a;b", "a\nb"])
def test_bad_label_values(value: str) -> None:
    with pytest.raises(ValueError):
        check_label_value(value)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("rack=r1", (Requirement("rack", Op.EQ, ("r1",)),)),
        ("rack==r1", (Requirement("rack", Op.EQ, ("r1",)),)),
        ("rack!=r1", (Requirement("rack", Op.NE, ("r1",)),)),
        ("role in (worker,storage)", (Requirement("role", Op.IN, ("worker", "storage")),)),
        ("role notin (a)", (Requirement("role", Op.NOTIN, ("a",)),)),
        ("maintenance", (Requirement("maintenance", Op.EXISTS),)),
        ("!maintenance", (Requirement("maintenance", Op.NOT_EXISTS),)),
        (
            "rack=r1,role in (worker, storage),!maintenance",
            (
                Requirement("rack", Op.EQ, ("r1",)),
                Requirement("role", Op.IN, ("worker", "storage")),
                Requirement("maintenance", Op.NOT_EXISTS),
            ),
        ),
        ("bronze.dev/pool=gpu", (Requirement("bronze.dev/pool", Op.EQ, ("gpu",)),)),
        ("rack=", (Requirement("rack", Op.EQ, ("",)),)),
    ],
    ids=[
        "eq",
        "eqeq",
        "ne",
        "in",
        "notin",
        "exists",
        "not-exists",
        "combined",
        "prefixed",
        "empty-value",
    ],
)
def test_selector_parse(text: str, expected: tuple[Requirement, ...]) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "rack=r1,",
        ",rack",
        "role in worker",
        "role in (a",
        "role in ()",
        "a=b=c",
        "rack r1",
        "!",
        "a;b",
        "role in (a,,b)",
        "${x}=1",
    ],
    ids=[
        "trailing-comma",
        "leading-comma",
        "in-no-paren",
        "unclosed",
        "empty-set",
        "double-eq",
        "no-op",
        "bare-bang",
        "semicolon",
        "empty-member",
        "injection",
    ],
)
def test_selector_errors(text: str) -> None:
    with pytest.raises(SelectorError):
        parse(text)


@pytest.mark.parametrize(
    "text,labels,expected",
    [
        ("rack=r1", {"rack": "r1"}, True),
        ("rack=r1", {"rack": "r2"}, False),
        ("rack!=r1", {}, True),
        ("role in (a,b)", {"role": "b"}, True),
        ("role notin (a,b)", {"role": "c"}, True),
        ("role notin (a,b)", {"role": "a"}, False),
        ("!maintenance", {"maintenance": ""}, False),
        ("rack=r1,!maintenance", {"rack": "r1"}, True),
    ],
)
def test_selector_matches(text: str, labels: dict[str, str], expected: bool) -> None:
    assert matches(parse(text), labels) is expected


# --- trailing newlines (issue 10.9): Python's `$` matches before a final "\n" ------------------


def _config(**doc: object) -> None:
    from server.config.model import MachineConfig

    MachineConfig.model_validate(doc)


def _ipxe_profile(name: str) -> None:
    from pxe.ipxe import BootProfile

    BootProfile(name=name, kernel="vmlinuz")


def _ipxe_context(**kw: str) -> None:
    from pxe.ipxe import RenderContext

    RenderContext(**{"mac": "52:54:00:00:00:01", "server": "http://127.0.0.1:8080", **kw})


def _asset(name: str) -> None:
    from server.boot.assets import check_name

    check_name(name)


def _service(name: str) -> None:
    from agent.gen import agent_pb2 as pb
    from agent.nodeops import _log_path

    _log_path(pb.NodeOp(kind=pb.NODE_OP_LOGS, service=name))


def _pxe_mac(mac: str) -> None:
    from pxe.ipxe import RenderContext

    RenderContext(mac=mac, server="http://127.0.0.1:8080")


NEWLINE_CASES = [
    ("machine-name", check_dns_label, "node-a"),
    ("label-key", check_label_key, "rack"),
    ("label-key-prefix", lambda v: check_label_key(v + "/role"), "bronze.dev"),
    ("label-value", check_label_value, "v1"),
    ("asset-name", _asset, "vmlinuz"),
    ("ipxe-profile-name", _ipxe_profile, "default"),
    ("ipxe-mac", _pxe_mac, "52:54:00:00:00:01"),
    ("ipxe-server", lambda v: _ipxe_context(server=v), "http://127.0.0.1:8080"),
    ("ipxe-uuid", lambda v: _ipxe_context(uuid=v), "4c4c4544-0000-1000-8000-000000000001"),
    ("ipxe-token", lambda v: _ipxe_context(token=v), "abc123"),
    ("config-hostname", lambda v: _config(hostname=v), "node-a.example"),
    ("config-ifname", lambda v: _config(network={"links": {v: {}}}), "eth0"),
    ("config-sysctl", lambda v: _config(sysctls={v: "1"}), "net.ipv4.ip_forward"),
    ("config-volume", lambda v: _config(volumes={v: {"disk": "/dev/sdb", "mount": "/d"}}), "data"),
    ("node-service", _service, "kubelet"),
]


@pytest.mark.parametrize(
    ("check", "good"), [c[1:] for c in NEWLINE_CASES], ids=[c[0] for c in NEWLINE_CASES]
)
def test_a_trailing_newline_is_refused(check: object, good: str) -> None:
    from agent.nodeops import NodeOpError
    from pxe.errors import UnsafeValue
    from server.boot.assets import AssetError

    assert callable(check)
    check(good)  # the value itself is fine ...
    with pytest.raises((ValueError, UnsafeValue, AssetError, NodeOpError)):  # ... this is not
        check(good + "\n")
