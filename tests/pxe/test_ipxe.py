"""iPXE rendering and strict validation, by table (profile choice: test_boot_decide.py)."""
# ruff: noqa: S106

from __future__ import annotations

import pytest

from pxe.errors import UnsafeValue
from pxe.ipxe import (
    BootAction,
    BootProfile,
    RenderContext,
    render,
    validate,
)

CTX = RenderContext(
    mac="52:54:00:12:34:56",
    server="http://10.0.0.1:8080",
    uuid="8a3b4c5d-1e2f-4a5b-8c9d-0e1f2a3b4c5d",
    token="abc.DEF-123",
)
PROFILE = BootProfile(
    name="agent",
    kernel="${server}/assets/vmlinuz",
    initrds=("${server}/assets/initrd.img",),
    args=("console=ttyS0", "bronze.mac=${mac}", "bronze.token=${token}", "quiet"),
)


def test_render_profile() -> None:
    assert render(BootAction.PROFILE, CTX, PROFILE) == (
        "#!ipxe\n"
        "kernel --name kernel http://10.0.0.1:8080/assets/vmlinuz console=ttyS0 "
        "bronze.mac=52:54:00:12:34:56 bronze.token=abc.DEF-123 quiet initrd=initrd0\n"
        "initrd --name initrd0 http://10.0.0.1:8080/assets/initrd.img\n"
        "boot\n"
    )


@pytest.mark.parametrize(
    ("action", "want"),
    [
        (BootAction.DISK, "#!ipxe\nsanboot --no-describe --drive 0x80 || exit\n"),
        (BootAction.NONE, "#!ipxe\necho bronze: nothing to boot\nexit\n"),
    ],
    ids=["disk", "none"],
)
def test_render_other_actions(action: BootAction, want: str) -> None:
    assert render(action, CTX) == want


def test_missing_variable_value_refused() -> None:
    ctx = RenderContext(mac="52:54:00:12:34:56", server="http://10.0.0.1:8080")
    with pytest.raises(UnsafeValue):
        render(BootAction.PROFILE, ctx, PROFILE)


BAD = {
    "newline": "a\nshell",
    "carriage_return": "a\rb",
    "semicolon": "a;reboot",
    "and": "a&&reboot",
    "or": "a||reboot",
    "hash": "a#comment",
    "other_variable": "${net0/ip}",
    "nested_variable": "${mac${uuid}}",
    "dollar": "$x",
    "space": "a b",
    "tab": "a\tb",
    "double_quote": 'a"b',
    "single_quote": "a'b",
    "backtick": "a`b",
    "backslash": "a\\b",
    "control_char": "a\x01b",
    "del_char": "a\x7fb",
    "non_ascii": "a\u00e9",
    "empty": "",
}


@pytest.mark.parametrize("value", BAD.values(), ids=BAD.keys())
def test_validate_refuses(value: str) -> None:
    with pytest.raises(UnsafeValue):
        validate("args[0]", value)
    with pytest.raises(UnsafeValue):
        BootProfile(name="p", kernel="http://x/k", args=(value,))


GOOD = ["console=ttyS0,115200n8", "http://h:80/k?a=1&b=2", "${mac}", "x=${server}/y", "ro"]


@pytest.mark.parametrize("value", GOOD, ids=GOOD)
def test_validate_accepts(value: str) -> None:
    assert validate("args[0]", value) == value


CTX_BAD = {
    "mac_upper": {"mac": "52:54:00:12:34:5G", "server": "http://a"},
    "server_with_space": {"mac": "52:54:00:12:34:56", "server": "http://a b"},
    "server_ftp": {"mac": "52:54:00:12:34:56", "server": "ftp://a"},
    "uuid_garbage": {"mac": "52:54:00:12:34:56", "server": "http://a", "uuid": "x;y"},
    "token_newline": {"mac": "52:54:00:12:34:56", "server": "http://a", "token": "t\nboot"},
}


@pytest.mark.parametrize("kw", CTX_BAD.values(), ids=CTX_BAD.keys())
def test_context_refuses(kw: dict[str, str]) -> None:
    with pytest.raises(UnsafeValue):
        RenderContext(**kw)
