"""The GRUB environment block: a 1024-byte file GRUB can rewrite in place at boot.

Format (GRUB ``grub-core/lib/envblk.c``)::

    # GRUB Environment Block\\n
    name=value\\n            one line per variable, in order
    ...
    ##########...            '#' padding up to exactly 1024 bytes

A backslash or newline inside a value is escaped with a backslash. GRUB's ``save_env`` never
changes the file's size or its blocks (it writes through a blocklist), which is why the file
must be exactly the block size, not sparse, and on a filesystem GRUB can map (ext4, FAT; not
btrfs/ZFS/LVM-RAID). ``grub-editenv FILE list|set|unset`` is the userspace tool for the same
format; the tests check this codec against it in both directions.

Pure: :func:`decode` and :func:`encode` work on bytes; writing the file is the caller's job
(atomically: temp file + fsync + rename, so a crash leaves the old or the new block).
"""

from __future__ import annotations

import re

SIGNATURE = b"# GRUB Environment Block\n"
SIZE = 1024
_NAME = re.compile(r"[A-Za-z0-9_]+")


class GrubEnvError(ValueError):
    """Not a GRUB environment block, or a variable that cannot be stored in one."""


def decode(data: bytes) -> dict[str, str]:
    """The variables of an environment block, in file order."""
    if not data.startswith(SIGNATURE):
        raise GrubEnvError("missing '# GRUB Environment Block' signature")
    if len(data) != SIZE:
        raise GrubEnvError(f"environment block is {len(data)} bytes, expected {SIZE}")
    out: dict[str, str] = {}
    body = data[len(SIGNATURE) :].decode("utf-8", "replace")
    for line in _split_lines(body):
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            continue  # GRUB ignores lines without '='
        out[name] = _unescape(value)
    return out


def encode(env: dict[str, str]) -> bytes:
    """A 1024-byte environment block holding ``env`` (raises if it does not fit)."""
    out = bytearray(SIGNATURE)
    for name, value in env.items():
        if not _NAME.fullmatch(name):
            raise GrubEnvError(f"variable name {name!r} is not [A-Za-z0-9_]+")
        escaped = value.replace("\\", "\\\\").replace("\n", "\\\n")
        out += f"{name}={escaped}\n".encode()
    if len(out) > SIZE:
        raise GrubEnvError(f"variables need {len(out)} bytes, the block holds {SIZE}")
    return bytes(out) + b"#" * (SIZE - len(out))


def _split_lines(body: str) -> list[str]:
    """Split on newlines that are not escaped by a backslash (escapes stay in the line)."""
    if "\\" not in body:  # no escape: the usual block, split in C (a 1 KiB block char by
        return body.split("\n")  # char was most of a simulated node's slot bookkeeping)
    lines: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            cur += [c, body[i + 1]]
            i += 2
            continue
        if c == "\n":
            lines.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    lines.append("".join(cur))
    return lines


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value, flags=re.DOTALL)
