"""Sampling profiles of a running server for the benches (py-spy, from the ``bench`` extra).

``Sampler(pid, path)`` attaches ``py-spy record --gil`` to the process for as long as the
``with`` block lasts and writes collapsed stacks (``--format raw``) to ``path``. Only samples
of a thread holding the GIL are kept: the profile is the server's Python CPU time, not threads
waiting on a lock or a socket. :func:`top` reads them back as the functions in most samples,
inclusive (a flame graph's widest boxes), which is what the docs quote.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import TracebackType


class Sampler:
    def __init__(self, pid: int, path: Path | None, rate: int = 100) -> None:
        self.pid, self.path, self.rate = pid, path, rate
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Sampler:
        if self.path is None:
            return self
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.proc = subprocess.Popen(
            [spy, "record", "--pid", str(self.pid), "--rate", str(self.rate), "--format", "raw",
             "--output", str(self.path), "--nonblocking", "--gil"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def top(path: Path, n: int = 15) -> list[tuple[float, str]]:
    """(percent of samples, function) for the ``n`` functions seen in most samples."""
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        for frame in set(stack.split(";")):
            inclusive[frame.split(" (")[0] + " (" + frame.split(" (")[-1]] += int(count)
    return [(100 * c / max(total, 1), f) for f, c in inclusive.most_common(n)]


if __name__ == "__main__":
    for pct, fn in top(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 25):
        print(f"{pct:5.1f} %  {fn}")
