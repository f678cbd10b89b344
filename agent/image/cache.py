"""Build caching: an image is named by the digest of everything that goes into it.

:class:`BuildInputs` lists the inputs (the Debian mirror and suite, the packages, the exact
kernel package, the module list, the content of every wheel, the fleet CA, the default kernel
arguments, the compression and the builder's own version). :func:`cache_key` is a pure function
of them: the same inputs give the same key, any change gives a new one. A finished image is
stored under its key and reused without any network traffic; the Debian root is cached the same
way under :func:`root_key` (the mirror, suite and packages only), so a build after an agent
change skips ``debootstrap``.

Debian does not pin versions: a ``debootstrap`` today and one next month may install different
point releases. The cache is what makes "same inputs, same image" true; ``--no-cache`` rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

BUILDER_VERSION = "6"
"""Bumped when the builder changes what it puts in an image for the same inputs."""


@dataclass(frozen=True)
class BuildInputs:
    """Everything an image is made of (digests stand for file contents)."""

    mirror: str
    suite: str
    packages: tuple[str, ...]
    kernel_package: str
    """The resolved kernel package and version, e.g. ``linux-image-6.1.0-56-amd64=6.1.192-2``."""
    modules: tuple[str, ...]
    wheels: tuple[tuple[str, str], ...]
    """(project name, content digest) of the bronze wheel and each dependency wheel."""
    ca_sha256: str
    args: tuple[str, ...]
    compression: str
    tools: tuple[str, ...] = ()
    """``name=version`` of the Debian packages the installer's tools come from (``tools.py``)."""
    builder: str = BUILDER_VERSION


def cache_key(inputs: BuildInputs) -> str:
    """sha256 of the canonical JSON of the inputs (sorted keys, tuples as lists)."""
    doc = json.dumps(asdict(inputs), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()


def root_key(mirror: str, suite: str, packages: tuple[str, ...]) -> str:
    """The key of the Debian root alone (what ``debootstrap`` produces; pruning comes after):
    the mirror, suite and packages of :class:`BuildInputs`, known before the wheels are."""
    doc = json.dumps([mirror, suite, list(packages)], separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()


def wheel_digest(path: Path, skip: tuple[str, ...] = ()) -> str:
    """sha256 over a wheel's member names and contents, not its zip bytes (a rebuilt wheel of
    the same source differs only in timestamps). Members under a top-level package in ``skip``
    (what the image leaves out) and then the wheel's ``RECORD`` (which hashes them too) do not
    count: a change to ``server/`` must not rebuild the node image."""
    h = hashlib.sha256()
    with zipfile.ZipFile(path) as zf:
        for name in sorted(zf.namelist()):
            top = name.split("/", 1)[0]
            if skip and (top in skip or name.endswith(".dist-info/RECORD")):
                continue
            h.update(name.encode() + b"\0")
            h.update(hashlib.sha256(zf.read(name)).digest())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
