"""The image's Python: what of the standard library stays, and compiled ahead of time.

Every boot starts a fresh interpreter from a RAM root, so whatever Python compiles at import it
compiles again at the next boot: under QEMU TCG that was seconds of every boot. The builder
compiles everything once, with the image's own interpreter (``chroot ROOT python3 -m
compileall``, so the bytecode's magic number is the interpreter's), in ``unchecked-hash``
mode: the ``.pyc`` records a hash of its source instead of a timestamp (reproducible; the
importer never stats nor hashes the source at boot).

Only the agent's own package keeps its ``.py`` files (a traceback from the agent shows the
lines); the standard library and the wheels keep only their bytecode, as legacy ``.pyc`` next to
where the ``.py`` was (``compileall -b``; the importer loads such sourceless files). A traceback
through them still names the file, line and function, without the source line.

:data:`STDLIB_PRUNE` is removed first: packages the agent never imports (IDLE, tkinter, the
test suite, the build and packaging tools, ...) and every codec except those Python or the
agent use.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from agent.image.debian import remove_matching

STDLIB_PRUNE: tuple[str, ...] = (
    "test", "idlelib", "tkinter", "turtledemo", "turtle.py", "lib2to3", "ensurepip",
    "pydoc_data", "pydoc.py", "unittest", "distutils", "sqlite3", "venv", "config-3.*",
    "curses", "dbm", "xmlrpc", "wsgiref", "msilib", "doctest.py", "pdb.py", "mailbox.py",
    "imaplib.py", "nntplib.py", "smtplib.py", "ftplib.py", "poplib.py", "telnetlib.py",
    "_pydecimal.py", "pickletools.py", "lib-dynload/_sqlite3.*", "lib-dynload/_curses*",
    "lib-dynload/_dbm.*", "lib-dynload/_gdbm.*", "lib-dynload/_tkinter.*",
    "lib-dynload/_test*", "lib-dynload/xxlimited*", "lib-dynload/_ctypes_test*",
    "lib-dynload/_xxtestfuzz*", "lib-dynload/nis.*", "lib-dynload/_codecs_*",
    "lib-dynload/_multibytecodec.*", "lib-dynload/audioop.*", "lib-dynload/_crypt.*",
    "lib-dynload/readline.*", "crypt.py", "nis.py",
)  # fmt: skip
"""Relative to ``usr/lib/python3.X``; globs. The extension modules go with their libraries (NIS
pulls in libtirpc and Kerberos, readline libreadline; the CJK codecs are 0.9 MiB)."""

KEEP_ENCODINGS: frozenset[str] = frozenset(
    {"__init__", "aliases", "ascii", "latin_1", "utf_8", "utf_8_sig", "utf_16", "utf_16_le",
     "utf_16_be", "utf_32", "idna", "punycode", "raw_unicode_escape", "unicode_escape",
     "cp437", "charmap", "hex_codec", "base64_codec"}
)  # fmt: skip
"""Codecs kept in ``encodings/`` (the rest are legacy code pages nothing on a node reads)."""

SOURCE_KEPT: tuple[str, ...] = ("agent",)
"""Packages (top-level, in the agent's site-packages) that keep their ``.py`` files."""


class PythonError(Exception):
    """The image's interpreter could not compile its library."""


def stdlib_dir(root: Path) -> Path:
    found = sorted(p for p in (root / "usr/lib").glob("python3.*") if p.is_dir())
    if not found:
        raise PythonError("the Debian root has no usr/lib/python3.X")
    return found[-1]


def prune_stdlib(root: Path) -> None:
    lib = stdlib_dir(root)
    remove_matching(lib, STDLIB_PRUNE)
    for path in (lib / "encodings").glob("*.py"):
        if path.stem not in KEEP_ENCODINGS:
            path.unlink()


def compile_all(root: Path, site: Path) -> None:
    """Bytecode for the whole library (``unchecked-hash``); then only :data:`SOURCE_KEPT`
    keeps its sources (and its ``__pycache__``), every other ``.py`` is replaced by its legacy
    ``.pyc``. ``site`` is the agent's site-packages inside ``root``."""
    lib = stdlib_dir(root)
    dirs = [lib, root / "usr/lib/python3/dist-packages", site]
    dirs = [d for d in dirs if d.is_dir()]
    keep = [site / name for name in SOURCE_KEPT]
    inside = ["/" + str(d.relative_to(root)) for d in dirs]
    py = f"/usr/bin/{lib.name}"
    base = ["chroot", str(root), py, "-m", "compileall", "-q", "-f"]
    mode = ["--invalidation-mode", "unchecked-hash"]
    skip = "|".join(f"/{d.relative_to(root)}/" for d in keep)
    _run([*base, "-b", *mode, "-x", skip, *inside])  # legacy .pyc beside each .py
    _run([*base, *mode, *["/" + str(d.relative_to(root)) for d in keep if d.is_dir()]])
    for d in dirs:
        for src in d.rglob("*.py"):
            if any(src.is_relative_to(k) for k in keep):
                continue
            if src.with_suffix(".pyc").is_file():
                src.unlink()


def _run(cmd: list[str]) -> None:
    """Status 1 is a file that does not compile (it keeps its ``.py``); anything else fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise PythonError(f"compileall in the image failed: {' / '.join(tail)}")
