"""Table tests for the pure parts: layout, boot choice, env block codec."""

from __future__ import annotations

import pytest

from agent.install import grubenv
from agent.install.boot import KernelEntry, Slot, choose_boot, render_slot_cfg
from agent.install.layout import Firmware, LayoutError, MiB, PartLabel, plan_layout, render_sfdisk

GiB = 1024 * MiB


@pytest.mark.parametrize(
    ("firmware", "labels"),
    [
        (Firmware.BOTH, ["BIOS", "EFI", "BOOT-A", "BOOT-B", "STATE", "EPHEMERAL"]),
        (Firmware.BIOS, ["BIOS", "BOOT-A", "BOOT-B", "STATE", "EPHEMERAL"]),
        (Firmware.UEFI, ["EFI", "BOOT-A", "BOOT-B", "STATE", "EPHEMERAL"]),
    ],
    ids=["both", "bios", "uefi"],
)
def test_layout_labels(firmware: Firmware, labels: list[str]) -> None:
    parts = plan_layout(2 * GiB, firmware)
    assert [p.label.value for p in parts] == labels
    assert [p.number for p in parts] == list(range(1, len(parts) + 1))
    assert parts[0].start == MiB
    for a, b in zip(parts, parts[1:], strict=False):
        assert a.end == b.start and a.start % MiB == 0
    assert parts[-1].end <= 2 * GiB - 33 * 512
    assert parts[-1].label is PartLabel.EPHEMERAL and parts[-1].mountpoint == "/var"


@pytest.mark.parametrize(
    ("disk", "fits"),
    [(2 * GiB, True), (1226 * MiB + 512 * MiB + 33 * 512, True),
     (1226 * MiB + 512 * MiB + 33 * 512 - 1, False), (0, False)],
    ids=["2GiB", "exact-minimum", "one-byte-short", "empty"],
)  # fmt: skip
def test_layout_too_small(disk: int, fits: bool) -> None:
    if fits:
        assert plan_layout(disk, Firmware.BOTH)[-1].size >= 512 * MiB
        return
    needed = 1226 * MiB + 512 * MiB + 33 * 512
    with pytest.raises(LayoutError) as err:
        plan_layout(disk, Firmware.BOTH)
    assert str(err.value) == (
        f"disk of {disk} bytes is too small: the layout needs at least {needed} bytes "
        f"({needed - disk} more), EPHEMERAL minimum {512 * MiB} bytes"
    )


def test_sfdisk_script() -> None:
    text = render_sfdisk(plan_layout(2 * GiB, Firmware.BOTH))
    assert text.startswith("label: gpt\n")
    assert 'start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name="BIOS"' in text


CASES = [
    ({}, "A", {}),
    ({"default_slot": "B"}, "B", {"default_slot": "B"}),
    ({"default_slot": "junk"}, "A", {"default_slot": "junk"}),
    ({"default_slot": "A", "try_slot": "B", "try_count": "3"}, "B",
     {"default_slot": "A", "try_slot": "B", "try_count": "2"}),
    ({"default_slot": "A", "try_slot": "B", "try_count": "1"}, "B",
     {"default_slot": "A", "try_slot": "B", "try_count": "0"}),
    ({"default_slot": "A", "try_slot": "B", "try_count": "0"}, "A", {"default_slot": "A"}),
    ({"default_slot": "A", "try_slot": "B", "try_count": "6"}, "A", {"default_slot": "A"}),
    ({"default_slot": "A", "try_slot": "B", "try_count": "-1"}, "A", {"default_slot": "A"}),
    ({"default_slot": "B", "try_slot": "C", "try_count": "2"}, "B", {"default_slot": "B"}),
    ({"default_slot": "A", "try_slot": "B"}, "A", {"default_slot": "A"}),
    ({"default_slot": "A", "try_count": "2"}, "A", {"default_slot": "A"}),
    ({"try_slot": "", "try_count": ""}, "A", {}),
    ({"default_slot": "B", "try_slot": "A", "try_count": "5", "x": "y"}, "A",
     {"default_slot": "B", "try_slot": "A", "try_count": "4", "x": "y"}),
]  # fmt: skip
CASE_IDS = ["empty", "default-B", "default-garbage", "try-3", "try-last", "tries-spent",
            "count-over-max", "count-negative", "try-slot-garbage", "slot-without-count",
            "count-without-slot", "both-empty", "other-vars-kept"]  # fmt: skip


@pytest.mark.parametrize(("env", "slot", "after"), CASES, ids=CASE_IDS)
def test_choose_boot(env: dict[str, str], slot: str, after: dict[str, str]) -> None:
    assert choose_boot(env) == (Slot(slot), after)


def test_slot_cfg() -> None:
    text = render_slot_cfg(Slot.B, KernelEntry("vmlinuz", ("a.img", "b.img"), ("quiet", "x=a b")))
    assert text == "linux /vmlinuz quiet 'x=a b' bronze.slot=B\ninitrd /a.img /b.img\n"


@pytest.mark.parametrize(
    "env",
    [{}, {"a": "1", "b_2": "x=y"}, {"nl": "one\ntwo", "bs": "a\\b"}, {"u": "é"}],
    ids=["empty", "plain", "escapes", "utf8"],
)
def test_grubenv_roundtrip(env: dict[str, str]) -> None:
    data = grubenv.encode(env)
    assert len(data) == 1024 and data.startswith(grubenv.SIGNATURE)
    assert grubenv.decode(data) == env


@pytest.mark.parametrize(
    ("call", "message"),
    [(lambda: grubenv.encode({"bad-name": "x"}), "is not [A-Za-z0-9_]+"),
     (lambda: grubenv.encode({"big": "x" * 1000}), "the block holds 1024"),
     (lambda: grubenv.decode(b"hello"), "signature"),
     (lambda: grubenv.decode(grubenv.SIGNATURE + b"#" * 10), "expected 1024")],
    ids=["bad-name", "too-big", "no-signature", "short"],
)  # fmt: skip
def test_grubenv_errors(call: object, message: str) -> None:
    with pytest.raises(grubenv.GrubEnvError, match=message.replace("[", r"\[").replace("+", r"\+")):
        call()  # type: ignore[operator]
