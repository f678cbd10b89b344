"""Machine config: RFC 7386 merge patch, layering with provenance, validation paths, diff,
deterministic versions. Pure functions, table-tested."""

import json

import pytest

from server.config import (
    ConfigError,
    Layer,
    Patch,
    diff,
    json_schema,
    merge_patch,
    needs_reboot,
    render,
    validate_patch,
)

# RFC 7386 Appendix A test cases.
RFC7386 = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(
    ("target", "patch", "expected"), RFC7386, ids=[f"rfc7386-{i}" for i in range(len(RFC7386))]
)
def test_merge_patch_rfc7386(target, patch, expected):
    before = json.dumps(target)
    assert merge_patch(target, patch) == expected
    assert json.dumps(target) == before  # target untouched


FLEET = Patch(
    "fleet-dns",
    Layer.FLEET,
    {
        "network": {"dns": {"nameservers": ["10.0.0.53"]}},
        "sysctls": {"vm.swappiness": "10", "net.core.somaxconn": "1024"},
        "time": {"servers": ["ntp1.example.net"]},
    },
)
RACK = Patch(
    "rack-r1",
    Layer.SELECTOR,
    {"sysctls": {"vm.swappiness": "1"}},
    selector=lambda labels: labels.get("rack") == "r1",
)
M1 = Patch(
    "machine-m1",
    Layer.MACHINE,
    {
        "hostname": "m1",
        "network": {"links": {"eth0": {"addresses": ["10.0.0.11/24"], "mtu": 9000}}},
        "sysctls": {"net.core.somaxconn": None},
    },
)


@pytest.mark.parametrize(
    ("labels", "swappiness", "somaxconn_present"),
    [
        pytest.param({"rack": "r1"}, ("1", "rack-r1"), False, id="selector-matches"),
        pytest.param({"rack": "r2"}, ("10", "fleet-dns"), False, id="selector-misses"),
    ],
)
def test_layers_and_provenance(labels, swappiness, somaxconn_present):
    # Patches given out of order: layers decide the order (fleet, selector, machine).
    r = render([M1, RACK, FLEET], labels)
    assert r.config.sysctls["vm.swappiness"] == swappiness[0]
    assert r.provenance["/sysctls/vm.swappiness"] == swappiness[1]
    assert ("net.core.somaxconn" in r.config.sysctls) is somaxconn_present
    assert "/sysctls/net.core.somaxconn" not in r.provenance  # deleted: no provenance
    assert r.provenance["/hostname"] == "machine-m1"
    assert r.provenance["/network/links/eth0/mtu"] == "machine-m1"
    assert r.provenance["/network/dns/nameservers"] == "fleet-dns"
    assert r.config.network.links["eth0"].mtu == 9000


def test_string_selector_uses_server_selectors():
    p = Patch(
        "ssd",
        Layer.SELECTOR,
        {"kernel_args": ["nvme_core.io_timeout=255"]},
        selector="disk in (nvme,ssd),!legacy",
    )
    assert render([p], {"disk": "nvme"}).config.kernel_args == ["nvme_core.io_timeout=255"]
    assert render([p], {"disk": "nvme", "legacy": "1"}).config.kernel_args == []


def test_version_is_deterministic_and_content_addressed():
    a = render([FLEET, M1], {})
    b = render([FLEET, M1], {})
    assert a.version == b.version and len(a.version) == 32
    # Same content reached another way: same version.
    same = Patch("all-in-one", Layer.MACHINE, json.loads(a.canonical_json))
    assert render([same]).version == a.version
    changed = Patch("x", Layer.MACHINE, {"hostname": "m2"})
    assert render([FLEET, M1, changed]).version != a.version


@pytest.mark.parametrize(
    ("body", "path"),
    [
        pytest.param(
            {"network": {"links": {"eth0": {"mtu": "big"}}}},
            "/network/links/eth0/mtu",
            id="mtu-type",
        ),
        pytest.param(
            {"network": {"links": {"eth0": {"mtu": 100}}}},
            "/network/links/eth0/mtu",
            id="mtu-range",
        ),
        pytest.param(
            {"network": {"links": {"eth0": {"addresses": ["10.0.0.300/24"]}}}},
            "/network/links/eth0/addresses",
            id="bad-address",
        ),
        pytest.param(
            {"network": {"routes": [{"to": "default", "via": "x"}]}},
            "/network/routes/0/via",
            id="bad-gateway",
        ),
        pytest.param({"hostname": "Bad_Host"}, "/hostname", id="hostname"),
        pytest.param({"files": {"/etc/../shadow": {"content": "x"}}}, "/files", id="dotdot"),
        pytest.param({"files": {"/etc/x": {"mode": 0o17777}}}, "/files/~1etc~1x/mode", id="mode"),
        pytest.param({"install": {"disk": "sda"}}, "/install/disk", id="install-disk"),
        pytest.param({"unknown": 1}, "/unknown", id="unknown-field"),
        pytest.param({"sysctls": {"bad name": "1"}}, "/sysctls", id="sysctl-name"),
    ],
)
def test_invalid_patch_refused_with_path(body, path):
    with pytest.raises(ConfigError) as ei:
        validate_patch(body, "p1")
    assert ei.value.path == path
    assert ei.value.as_dict()["path"] == path


def test_render_error_names_the_patch_that_set_the_field():
    bad = Patch(
        "rack-typo",
        Layer.SELECTOR,
        {"network": {"links": {"eth0": {"mtu": "9k"}}}},
        selector=lambda labels: True,
    )
    with pytest.raises(ConfigError) as ei:
        render([FLEET, bad])
    assert ei.value.path == "/network/links/eth0/mtu"
    assert ei.value.patch == "rack-typo"
    assert "rack-typo" in str(ei.value)
    # A later layer that sets a valid value fixes it: M1 sets eth0.mtu = 9000.
    assert render([FLEET, bad, M1]).provenance["/network/links/eth0/mtu"] == "machine-m1"


def test_patch_must_be_object():
    with pytest.raises(ConfigError) as ei:
        validate_patch(["x"], "p")
    assert ei.value.path == ""


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param({"a": 1}, {"a": 1}, [], id="same"),
        pytest.param({"a": 1}, {"a": 2}, [("replace", "/a")], id="replace"),
        pytest.param({}, {"a": {"b": 1}}, [("add", "/a")], id="add"),
        pytest.param({"a": {"b": 1, "c": 2}}, {"a": {"b": 1}}, [("remove", "/a/c")], id="remove"),
        pytest.param({"l": [1]}, {"l": [1, 2]}, [("replace", "/l")], id="list-whole"),
        pytest.param(
            {"files": {"/a/b": 1}},
            {"files": {"/a/b": 2}},
            [("replace", "/files/~1a~1b")],
            id="escaped",
        ),
    ],
)
def test_diff(old, new, expected):
    assert [(c.op, c.path) for c in diff(old, new)] == expected


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param({"hostname": "a"}, {"hostname": "b"}, [], id="live"),
        pytest.param({}, {"kernel_args": ["quiet"]}, ["/kernel_args"], id="kargs"),
        pytest.param(
            {"install": {"disk": "/dev/sda"}},
            {"install": {"disk": "/dev/sdb"}},
            ["/install/disk"],
            id="install",
        ),
    ],
)
def test_needs_reboot(old, new, expected):
    assert needs_reboot(old, new) == expected


def test_schema_has_the_document_fields():
    props = json_schema()["properties"]
    for f in (
        "hostname",
        "network",
        "kernel_args",
        "sysctls",
        "files",
        "install",
        "volumes",
        "time",
    ):
        assert f in props


def test_full_document_round_trips():
    body = {
        "hostname": "db-1.example.net",
        "network": {
            "links": {
                "bond0": {"mtu": 9000, "addresses": ["10.1.0.5/24", "fd00::5/64"]},
                "eno1": {"mac": "AA:BB:CC:DD:EE:FF", "dhcp": True},
            },
            "routes": [{"to": "default", "via": "10.1.0.1", "link": "bond0"}],
            "dns": {"nameservers": ["10.1.0.53"], "search": ["example.net"]},
        },
        "kernel_args": ["console=ttyS0,115200", "intel_iommu=on"],
        "sysctls": {"net.ipv4.ip_forward": "1"},
        "files": {"/etc/motd": {"content": "hi\n", "mode": 0o644}},
        "install": {"disk": "/dev/nvme0n1", "wipe": True},
        "volumes": {"data": {"disk": "/dev/nvme1n1", "mount": "/var/lib/data"}},
        "time": {"servers": ["ntp.example.net"]},
    }
    r = render([Patch("m", Layer.MACHINE, body)])
    assert r.config.network.links["eno1"].mac == "aa:bb:cc:dd:ee:ff"
    again = render([Patch("m", Layer.MACHINE, r.document)])
    assert again.version == r.version


def test_rendered_json_and_version_are_those_of_its_document():
    """render() encodes the document once for the version and the push: both must stay what the
    document encodes to (keys sorted, no spaces, non-ASCII kept)."""
    from server.config.render import Rendered, canonical_json, config_version

    r = render(
        [
            Patch("fleet", Layer.FLEET, {"files": {"/etc/motd": {"content": "grüße\n"}}}),
            Patch("m", Layer.MACHINE, {"hostname": "n1", "sysctls": {"b.x": "2", "a.y": "1"}}),
        ]
    )
    assert r.canonical_json == canonical_json(r.document)
    assert json.loads(r.canonical_json) == r.document and "grüße" in r.canonical_json
    assert r.version == config_version(r.document)
    # Built without render() (no text made yet): encoded on demand, same result.
    bare = Rendered(r.config, r.document, r.version, r.provenance)
    assert bare.canonical_json == r.canonical_json and bare == r
