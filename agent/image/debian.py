"""The Debian parts of the image: the mirror, the root (``debootstrap``) and the kernel.

The build machine reaches Debian's package mirror and nothing else, so everything comes from
the mirror its apt is configured with: :func:`configured_mirror` reads deb822 ``*.sources``
files and one-line ``sources.list`` entries (pure: :func:`parse_sources`) and takes the first
``deb`` entry of a release suite (not ``-updates``/``-security``) with ``main``.

The root is ``debootstrap --variant=minbase`` plus :data:`PACKAGES`, then pruned of what a
RAM-resident agent never reads (:data:`PRUNE`: documentation, locales, apt and dpkg state;
the standard library's unused parts are :mod:`agent.image.python`'s). The kernel is Debian's
``linux-image-amd64``, resolved to its versioned package with the host's ``apt-cache`` and
fetched with ``apt-get download`` into the cache (it is never installed on the build host);
``dpkg-deb -x`` unpacks ``vmlinuz`` and the modules.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

PACKAGES: tuple[str, ...] = ("python3", "busybox-static")
"""Installed on top of minbase: the agent's interpreter and early userspace."""

KERNEL_META = "linux-image-amd64"

PRUNE: tuple[str, ...] = (
    "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
    "usr/share/bash-completion", "usr/share/common-licenses", "usr/share/perl",
    "usr/lib/x86_64-linux-gnu/perl",
    "usr/share/zsh", "usr/share/debconf", "usr/share/pixmaps", "usr/share/menu",
    "var/cache/apt", "var/lib/apt", "var/cache/debconf", "var/log",
    "usr/lib/x86_64-linux-gnu/gconv", "usr/share/zoneinfo", "var/lib/dpkg", "var/cache",
    "usr/lib/x86_64-linux-gnu/perl-base", "usr/bin/perl", "usr/bin/perl5.36.0", "usr/lib/apt",
)  # fmt: skip
"""Paths (relative to the root) removed after ``debootstrap``."""

PRUNE_KEEP: frozenset[str] = frozenset({"usr/lib/x86_64-linux-gnu/gconv/IBM850.so"})
"""Files under a :data:`PRUNE` directory that stay: mtools (the installer writes the ESP with
it) converts FAT names through iconv to code page 850 and fails without this module."""


class DebianError(Exception):
    """No usable mirror, or a Debian tool failed (the message names the tool)."""


@dataclass(frozen=True)
class Mirror:
    uri: str
    suite: str


def _deb822(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if cur:
                stanzas.append(cur)
            cur = {}
            continue
        key, sep, value = line.partition(":")
        if sep and not line[0].isspace():
            cur[key.strip().lower()] = value.strip()
    return stanzas


def _one_line(text: str) -> list[dict[str, str]]:
    out = []
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()  # drop [options]
        if words and words[0] == "deb":
            words = words[1:]
            if len(words) >= 3:
                out.append(
                    {
                        "types": "deb",
                        "uris": words[0],
                        "suites": words[1],
                        "components": " ".join(words[2:]),
                    }
                )
    return out


def parse_sources(files: list[tuple[str, str]]) -> Mirror:
    """The mirror from (file name, text) pairs: ``*.sources`` as deb822, others one-line."""
    for name, text in files:
        entries = _deb822(text) if name.endswith(".sources") else _one_line(text)
        for e in entries:
            if "deb" not in e.get("types", "").split() or e.get("enabled", "yes") == "no":
                continue
            if "main" not in e.get("components", "").split():
                continue
            for suite in e.get("suites", "").split():
                if "-" not in suite and "/" not in suite:
                    return Mirror(e.get("uris", "").split()[0].rstrip("/"), suite)
    raise DebianError("no Debian mirror configured (a 'deb' entry of a release suite with main)")


def configured_mirror(etc_apt: Path = Path("/etc/apt")) -> Mirror:
    files = []
    for path in [etc_apt / "sources.list", *sorted((etc_apt / "sources.list.d").glob("*"))]:
        if path.is_file() and path.suffix in (".list", ".sources"):
            files.append((path.name, path.read_text()))
    return parse_sources(files)


def _run(cmd: list[str], package: str, **kw: object) -> str:
    if shutil.which(cmd[0]) is None:
        raise DebianError(f"{cmd[0]} not found (install the Debian package {package})")
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise DebianError(f"{' '.join(cmd[:3])} failed: {' / '.join(tail)}")
    return str(proc.stdout)


def debootstrap(root: Path, mirror: Mirror, packages: tuple[str, ...], debs: Path) -> None:
    """A minimal Debian root at ``root`` (packages cached in ``debs``); :func:`prune` is a
    separate step (the cached root is the unpruned one)."""
    debs.mkdir(parents=True, exist_ok=True)
    _run(
        [
            "debootstrap", "--variant=minbase", f"--include={','.join(packages)}",
            f"--cache-dir={debs}", mirror.suite, str(root), mirror.uri,
        ],
        "debootstrap",
    )  # fmt: skip


def remove_matching(base: Path, patterns: tuple[str, ...]) -> None:
    """Remove every path under ``base`` matching one of the glob ``patterns``: a directory with
    what it holds, a file or a symlink itself (never what a symlink points to)."""
    for pattern in patterns:
        for path in base.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def prune(root: Path) -> None:
    """Remove :data:`PRUNE`, apt's programs and libraries, and the compiled Python caches
    ``debootstrap`` made (timestamp-checked; the builder compiles its own, see
    :mod:`agent.image.python`)."""
    for rel in PRUNE:
        path = root / rel
        keep = [k for k in PRUNE_KEEP if k.startswith(rel + "/") and (root / k).exists()]
        if keep and path.is_dir():
            for child in path.iterdir():
                if str(child.relative_to(root)) not in keep:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    remove_matching(root, ("usr/bin/apt*", "usr/lib/x86_64-linux-gnu/libapt-*"))
    for top in ("usr/lib/python3", "usr/lib/python3.11", "usr/local/lib"):
        for cache in list(root.joinpath(top).rglob("__pycache__")):
            shutil.rmtree(cache, ignore_errors=True)
    (root / "var/log").mkdir(parents=True, exist_ok=True)


def kernel_package(meta: str = KERNEL_META) -> str:
    """The versioned kernel package the meta package depends on (the host's apt lists)."""
    deps = _run(["apt-cache", "depends", "--important", meta], "apt")
    for line in deps.splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and name.startswith("linux-image-"):
            return name
    raise DebianError(f"cannot resolve {meta} with apt-cache (run apt-get update?)")


def parse_candidates(policy: str) -> dict[str, str]:
    """``apt-cache policy A B ...``'s output -> {package: candidate version}; packages without
    a candidate (``(none)``) are left out."""
    found: dict[str, str] = {}
    name = ""
    for line in policy.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            name = line[:-1]
        elif name and line.strip().startswith("Candidate:"):
            candidate = line.split(":", 1)[1].strip()
            if candidate != "(none)":
                found[name] = candidate
    return found


def candidates(names: tuple[str, ...]) -> dict[str, str]:
    """The version the host's apt would install of each package, in one ``apt-cache policy``
    (each call loads apt's whole cache: ~1 s, 13 calls were ~15 s of every build)."""
    found = parse_candidates(_run(["apt-cache", "policy", *names], "apt"))
    missing = [n for n in names if n not in found]
    if missing:
        raise DebianError(f"no candidate for {', '.join(missing)} (run apt-get update?)")
    return found


def fetch_deb(package: str, version: str, debs: Path) -> Path:
    """The ``.deb`` of ``package=version`` in ``debs``, downloaded from the mirror when not
    cached (the kernel, the installer's tools)."""
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_{version.replace(':', '%3a')}_*.deb"))
    if not found:
        _run(["apt-get", "download", "-q", f"{package}={version}"], "apt", cwd=debs)
        found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        raise DebianError(f"apt-get download {package}={version} left no .deb in {debs}")
    return found[-1]


def unpack_kernel(deb: Path, dest: Path) -> tuple[Path, Path]:
    """``dpkg-deb -x``: returns (vmlinuz, lib/modules/<ver>)."""
    _run(["dpkg-deb", "-x", str(deb), str(dest)], "dpkg")
    vmlinuz = sorted((dest / "boot").glob("vmlinuz-*"))
    moddirs = sorted((dest / "lib/modules").iterdir()) if (dest / "lib/modules").is_dir() else []
    if not vmlinuz or not moddirs:
        raise DebianError(f"{deb.name} holds no vmlinuz or lib/modules")
    return vmlinuz[-1], moddirs[-1]
