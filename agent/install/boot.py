"""A/B boot selection with boot counting: the pure decision and the grub.cfg that runs it.

GRUB reads three variables from its environment block (``STATE:/grub/grubenv``) at every boot:

``default_slot``  the last slot known good (``A`` or ``B``; anything else counts as ``A``)
``try_slot``      a slot being tried after an upgrade (unset when no try is armed)
``try_count``     boots left for the try (``1`` .. :data:`MAX_TRIES`)

Decision (:func:`choose_boot`, and the same thing in GRUB script, :func:`render_selection`):

1. ``try_slot`` is ``A``/``B`` and ``try_count`` is ``1``..``MAX_TRIES`` -> decrement
   ``try_count``, ``save_env`` it, boot ``try_slot``. The count drops *before* the kernel runs,
   so a slot that hangs or panics uses up its tries without anyone's help.
2. otherwise, if ``try_slot`` or ``try_count`` is set (tries used up, or garbage) -> unset both,
   ``save_env``, boot ``default_slot``.
3. otherwise boot ``default_slot`` and write nothing (a normal boot does not touch the disk).

The running system makes a tried slot the default only when it is healthy
(:meth:`agent.install.slots.SlotStore.confirm_good`). GRUB script has no arithmetic, so the
decrement is an ``elif`` chain over the allowed counts. GRUB's ``save_env`` of an unset variable
deletes it from the block (checked under grub-emu, see tests/agent/install/test_grub_emu.py).
The booted kernel learns its slot from ``bronze.slot=A|B`` on its command line.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from enum import StrEnum

MAX_TRIES = 5
DEFAULT_SLOT = "default_slot"
TRY_SLOT = "try_slot"
TRY_COUNT = "try_count"


class Slot(StrEnum):
    """A boot slot (partition ``BOOT-A`` / ``BOOT-B``)."""

    A = "A"
    """Slot A (holds the installed image after a fresh install)."""
    B = "B"
    """Slot B."""

    @property
    def other(self) -> Slot:
        return Slot.B if self is Slot.A else Slot.A

    @property
    def label(self) -> str:
        return f"BOOT-{self.value}"


def choose_boot(env: dict[str, str]) -> tuple[Slot, dict[str, str]]:
    """The slot GRUB boots with environment ``env`` and the environment it leaves behind."""
    default = Slot.B if env.get(DEFAULT_SLOT) == "B" else Slot.A
    try_slot = env.get(TRY_SLOT)
    count = env.get(TRY_COUNT)
    allowed = {str(n): str(n - 1) for n in range(1, MAX_TRIES + 1)}
    if try_slot in ("A", "B") and count in allowed:
        return Slot(try_slot), {**env, TRY_COUNT: allowed[count]}
    if try_slot is not None or count is not None:
        return default, {k: v for k, v in env.items() if k not in (TRY_SLOT, TRY_COUNT)}
    return default, dict(env)


def render_selection(envfile: str = "${prefix}/grubenv") -> str:
    """GRUB script that sets ``boot_slot`` exactly as :func:`choose_boot` decides."""
    chain = []
    for n in range(1, MAX_TRIES + 1):
        kw = "if" if n == 1 else "elif"
        chain.append(
            f'    {kw} [ "${{try_count}}" = "{n}" ]; then set try_count="{n - 1}"; set tried=y'
        )
    return "\n".join(
        [
            f'set envfile="{envfile}"',
            'load_env --file "${envfile}"',
            'if [ "${default_slot}" = "B" ]; then set boot_slot="B"; else set boot_slot="A"; fi',
            "set tried=n",
            'if [ "${try_slot}" = "A" -o "${try_slot}" = "B" ]; then',
            *chain,
            "    fi",
            "fi",
            'if [ "${tried}" = "y" ]; then',
            '    set boot_slot="${try_slot}"',
            '    save_env --file "${envfile}" try_count',
            'elif [ -n "${try_slot}" -o -n "${try_count}" ]; then',
            "    unset try_slot",
            "    unset try_count",
            '    save_env --file "${envfile}" try_slot try_count',
            "fi",
            "export boot_slot",
        ]
    )


def render_grub_cfg() -> str:
    """The whole ``STATE:/grub/grub.cfg``: select a slot, then boot that slot's ``boot.cfg``."""
    return "\n".join(
        [
            "# bronze A/B boot (rendered by agent.install.boot; do not edit)",
            "insmod part_gpt",
            "insmod ext2",
            render_selection(),
            "set timeout=0",
            "set default=bronze",
            'menuentry "bronze slot ${boot_slot}" --id bronze {',
            '    search --no-floppy --label --set=root "BOOT-${boot_slot}"',
            '    source "($root)/boot.cfg"',
            "}",
            "",
        ]
    )


@dataclass(frozen=True)
class KernelEntry:
    kernel: str
    initrds: tuple[str, ...]
    kernel_args: tuple[str, ...]


def render_slot_cfg(slot: Slot, entry: KernelEntry) -> str:
    """A slot's ``boot.cfg``: its kernel, initrds, and arguments (plus ``bronze.slot=``)."""
    args = " ".join(shlex.quote(a) for a in (*entry.kernel_args, f"bronze.slot={slot.value}"))
    lines = [f"linux /{entry.kernel} {args}"]
    if entry.initrds:
        lines.append("initrd " + " ".join(f"/{name}" for name in entry.initrds))
    return "\n".join(lines) + "\n"


def slot_from_cmdline(cmdline: str) -> Slot | None:
    """The slot a running kernel was booted from (``bronze.slot=``), if it says."""
    for word in shlex.split(cmdline):
        key, _, value = word.partition("=")
        if key == "bronze.slot" and value in ("A", "B"):
            return Slot(value)
    return None
