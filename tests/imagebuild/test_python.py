"""The image's standard library pruning (the compile step runs the image's own interpreter in a
chroot: ``test_qemu_boot`` proves it, the agent starts from the compiled library)."""

from __future__ import annotations

from pathlib import Path

from agent.image.python import prune_stdlib


def test_prune_stdlib_removes_unused_parts_and_codecs(tmp_path: Path) -> None:
    lib = tmp_path / "usr/lib/python3.11"
    for rel in ("asyncio/base_events.py", "idlelib/idle.py", "test/test_os.py", "json/__init__.py",
                "pydoc.py", "encodings/utf_8.py", "encodings/cp1250.py", "encodings/aliases.py",
                "lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
                "lib-dynload/_sqlite3.cpython-311-x86_64-linux-gnu.so"):  # fmt: skip
        (lib / rel).parent.mkdir(parents=True, exist_ok=True)
        (lib / rel).write_text("")
    prune_stdlib(tmp_path)
    left = sorted(str(p.relative_to(lib)) for p in lib.rglob("*") if p.is_file())
    assert left == [
        "asyncio/base_events.py", "encodings/aliases.py", "encodings/utf_8.py",
        "json/__init__.py", "lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
    ]  # fmt: skip
