"""Root confinement for TFTP file names.

A TFTP file name is attacker-controlled bytes. We accept printable ASCII only (no NUL, no
0x80-0xff, no control characters), refuse absolute names, backslashes, percent-encoding and any
``..`` component, then resolve the real path (following symlinks) and refuse anything that does
not end up a regular file inside the real root. The caller opens the result with O_NOFOLLOW.
"""

from __future__ import annotations

import os
import stat


class Refused(Exception):  # noqa: N818
    """A name we will not serve; `code` is the TFTP error code to send."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


ACCESS_VIOLATION = 2
NOT_FOUND = 1


def resolve(root_real: str, raw: bytes) -> str:
    """Returns the real path of a regular file under `root_real`, or raises `Refused`."""
    if not raw or any(b < 0x20 or b > 0x7E for b in raw):
        raise Refused(ACCESS_VIOLATION, "illegal characters in file name")
    name = raw.decode("ascii")
    if name.startswith("/") or "\\" in name or "%" in name:
        raise Refused(ACCESS_VIOLATION, "absolute, backslashed or encoded names are refused")
    parts = name.split("/")
    if any(p == ".." for p in parts):
        raise Refused(ACCESS_VIOLATION, "parent directory references are refused")
    full = os.path.realpath(os.path.join(root_real, name))
    if full != root_real and not full.startswith(root_real + os.sep):
        raise Refused(ACCESS_VIOLATION, "outside the TFTP root")
    try:
        st = os.stat(full)
    except OSError:
        raise Refused(NOT_FOUND, "file not found") from None
    if not stat.S_ISREG(st.st_mode):
        raise Refused(NOT_FOUND, "not a regular file")
    return full
