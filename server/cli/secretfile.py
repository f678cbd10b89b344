"""Writing a secret (an API or enrollment token) to a file that only its owner can read.

``bronze token create ... > file`` leaves the file at the shell's umask (usually 0644: anyone on
the host can read the token). ``--output-file FILE`` writes it 0600 instead. The token goes into
a new temporary file created 0600 (``O_EXCL``, so nothing else holds it open) next to FILE, then
replaces FILE atomically: a FILE that existed with wider bits is replaced, not reused, and a
crash leaves either the old file or the new one, never half a token.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_secret(path: str | Path, secret: str) -> None:
    """Write ``secret`` plus a newline to ``path`` with mode 0600 (raises ``OSError``)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secret + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)  # the umask may only narrow it; make it exact
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
