"""Stored boot profiles and ``pxe.ipxe.BootProfile``.

A profile's kernel and initrds are either **asset names** (``vmlinuz``: served by this server at
``${server}/assets/vmlinuz``) or **URLs** (``http(s)://...`` or ``${server}/...``). Everything is
checked by ``pxe.ipxe.BootProfile`` when stored (REST 422 naming the field) and again when a
script is rendered, so a value that reached the database another way is still refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pxe import BootProfile, UnsafeValue
from server.boot.assets import ASSET_NAME_RE

_URL_RE = re.compile(r"^(https?://|\$\{server\}/)")
ASSET_PREFIX = "${server}/assets/"


def is_url(ref: str) -> bool:
    return bool(_URL_RE.match(ref))


def resolve(field: str, ref: str) -> str:
    """An asset name becomes ``${server}/assets/NAME``; a URL stays as it is."""
    if is_url(ref):
        return ref
    if ASSET_NAME_RE.fullmatch(ref) and ".." not in ref:
        return ASSET_PREFIX + ref
    raise UnsafeValue(field, ref, "neither an asset name nor an http(s):// or ${server}/ URL")


def asset_name(ref: str) -> str | None:
    """The asset a kernel/initrd reference names, None for a URL."""
    return None if is_url(ref) else ref


def asset_names(kernel: str, initrds: Sequence[str]) -> list[str]:
    """The asset names a profile references (URLs are not ours to check)."""
    return [r for r in (kernel, *initrds) if not is_url(r)]


def to_pxe(
    name: str,
    kernel: str,
    initrds: Sequence[str],
    args: Sequence[str],
    extra_args: Sequence[str] = (),
) -> BootProfile:
    """The validated ``pxe`` profile; raises ``UnsafeValue`` (with ``.field``) when unsafe."""
    return BootProfile(
        name=name,
        kernel=resolve("kernel", kernel),
        initrds=tuple(resolve(f"initrds[{i}]", r) for i, r in enumerate(initrds)),
        args=(*args, *extra_args),
    )


def uses_token(args: Sequence[str]) -> bool:
    return any("${token}" in a for a in args)
