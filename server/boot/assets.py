"""Boot assets (kernels, initrds) on disk under ``<data_dir>/assets``, and HTTP byte ranges.

Uploads are streamed to a temporary file in the same directory while hashing; the file becomes
visible (``os.replace``) only when the SHA-256 the client stated matches, so a truncated or
corrupted upload leaves nothing behind. Names are a strict allowlist (no path separators, no
leading dot, no ``..``), checked before any path is built; files are opened with ``O_NOFOLLOW``.

Ranges (RFC 9110 section 14): one ``bytes=`` range is honoured (206); a syntactically invalid
header, another unit, or several ranges are ignored (200 with the whole file, as the RFC allows);
a range that starts past the end is 416 with ``Content-Range: bytes */SIZE``.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

ASSET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class AssetError(Exception):
    """Upload refused; ``reason`` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_name(name: str) -> str:
    if not ASSET_NAME_RE.fullmatch(name) or ".." in name:
        raise AssetError(
            "asset names are 1-128 of [A-Za-z0-9._-], not starting with '.' or '-', without '..'"
        )
    return name


class Unsatisfiable(Exception):
    """A range that selects no byte of the file (HTTP 416)."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int
    """Inclusive."""

    @property
    def length(self) -> int:
        return self.end - self.start + 1


_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """None: serve the whole file. Raises `Unsatisfiable` for 416."""
    if header is None:
        return None
    m = _RANGE_RE.fullmatch(header.strip().replace(" ", ""))
    if m is None:
        return None  # another unit, several ranges, garbage: ignored
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if len(first) > 19 or len(last) > 19:
        return None
    if first == "":  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable()
        return ByteRange(max(0, size - n), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # invalid: ignored
    if start >= size:
        raise Unsatisfiable()
    return ByteRange(start, min(end, size - 1))


class AssetStore:
    """The asset directory (created 0700)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root, self.max_bytes = root, max_bytes

    def path(self, name: str) -> Path:
        return self.root / check_name(name)

    async def save(self, name: str, chunks: AsyncIterator[bytes], sha256: str) -> tuple[int, str]:
        """Stream to a temp file, verify, publish. Returns (size, sha256)."""
        import anyio

        target = self.path(name)
        if not SHA256_RE.fullmatch(sha256):
            raise AssetError("sha256 must be 64 lower-case hex digits")
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.root / f".upload-{secrets.token_hex(8)}"
        digest, size = hashlib.sha256(), 0
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise AssetError(f"asset larger than {self.max_bytes} bytes")
                    digest.update(chunk)
                    await anyio.to_thread.run_sync(fh.write, chunk)
            got = digest.hexdigest()
            if got != sha256:
                raise AssetError(f"sha256 mismatch: the body hashes to {got}")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return size, got

    def open(self, name: str) -> tuple[int, int]:
        """(fd, size) of a published asset; raises FileNotFoundError."""
        fd = os.open(self.path(name), os.O_RDONLY | os.O_NOFOLLOW)
        return fd, os.fstat(fd).st_size

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)
