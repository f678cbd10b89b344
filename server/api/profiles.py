"""``/api/v1/profiles``: boot profiles for operators (boot assets: :mod:`server.api.assets`).

Firmware-facing routes (``/boot.ipxe``, ``/assets/NAME``) are in ``server.api.boot``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from agent.image_manifest import TrustedKey
from pxe import UnsafeValue
from server.api.auth import Principal
from server.api.deps import Context, context, operator, reader
from server.api.images import trusted_keys
from server.api.schemas import Strict
from server.boot import images, profiles
from server.errors import Conflict, Invalid, NotFound
from server.inventory import machines as inventory
from server.inventory.models import BootAsset, BootProfile, utcnow
from server.inventory.selectors import SelectorError, parse
from server.types import EventKind

router = APIRouter(tags=["boot"])

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$"


class ProfileBody(Strict):
    selector: str = Field(default="", max_length=4096)
    """Kubernetes label selector; empty matches every machine."""
    kernel: str | None = Field(default=None, min_length=1, max_length=2048)
    """Asset name or http(s):// / ${server}/ URL; or name ``image`` instead."""
    image: str | None = Field(default=None, min_length=1, max_length=63)
    """An OS image (``/api/v1/images``) to boot: its kernel, initrds and default args (``args``
    are appended). Exactly one of ``kernel`` and ``image``."""
    initrds: list[str] = Field(default_factory=list, max_length=16)
    args: list[str] = Field(default_factory=list, max_length=128)
    """Kernel arguments, one per item (no spaces); may use ${mac} ${uuid} ${server} ${token}."""
    agent: bool = False
    """Append the agent's kernel args and a per-boot enrollment token."""


class ProfileIn(ProfileBody):
    name: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN)


def profile_out(p: BootProfile) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "selector": p.selector,
        "kernel": None if p.image else p.kernel,
        "image": p.image,
        "initrds": [] if p.image else p.initrds,
        "args": p.args,
        "agent": p.agent,
        "created_at": inventory.iso(p.created_at),
        "updated_at": inventory.iso(p.updated_at),
        "created_by": p.created_by,
    }


def _check(s: Session, name: str, body: ProfileBody, keys: Sequence[TrustedKey]) -> str:
    """422 naming the failing field: selector, kernel, image, initrds[i], args[i], or a missing
    asset. Returns the kernel to store (an image's own, for an image-backed profile)."""
    if (body.kernel is None) == (body.image is None):
        raise Invalid(message="give exactly one of kernel and image", details={"field": "kernel"})
    if body.image is not None:
        if body.initrds:
            raise Invalid(message="initrds: an image brings its own", details={"field": "initrds"})
        image = images.get_for_use(s, body.image, keys)
        kernel, initrds, args = images.image_boot(image, body.args)
        _check_boot(s, name, body.selector, kernel, initrds, args)
        return kernel
    assert body.kernel is not None
    _check_boot(s, name, body.selector, body.kernel, body.initrds, body.args)
    return body.kernel


def _check_boot(
    s: Session, name: str, selector: str, kernel: str, initrds: list[str], args: list[str]
) -> None:
    try:
        parse(selector)
    except SelectorError as exc:
        raise Invalid(message=f"selector: {exc}", details={"field": "selector"}) from None
    for i, a in enumerate(args):
        if len(a) > 1024:
            raise Invalid(
                message=f"args[{i}]: longer than 1024 characters",
                details={"field": f"args[{i}]", "reason": "too long"},
            )
    try:
        profiles.to_pxe(name, kernel, initrds, args)
    except UnsafeValue as exc:
        raise Invalid(
            message=f"{exc.field}: {exc.reason}", details={"field": exc.field, "reason": exc.reason}
        ) from None
    refs = [("kernel", kernel)] + [(f"initrds[{i}]", r) for i, r in enumerate(initrds)]
    for where, ref in refs:
        asset = profiles.asset_name(ref)
        if asset is not None and s.get(BootAsset, asset) is None:
            raise Invalid(
                message=f"{where}: asset {asset!r} not found (upload it first)",
                details={"field": where, "reason": "asset not found"},
            )


def _get(s: Session, name: str) -> BootProfile:
    p = s.scalar(select(BootProfile).where(BootProfile.name == name))
    if p is None:
        raise NotFound(kind="profile", key=name)
    return p


@router.get("/api/v1/profiles")
def list_profiles(
    ctx: Annotated[Context, Depends(context)], _: Annotated[Principal, Depends(reader)]
) -> list[dict[str, Any]]:
    with ctx.db.read() as s:
        return [profile_out(p) for p in s.scalars(select(BootProfile).order_by(BootProfile.name))]


@router.get("/api/v1/profiles/{name}")
def get_profile(
    name: str, ctx: Annotated[Context, Depends(context)], _: Annotated[Principal, Depends(reader)]
) -> dict[str, Any]:
    with ctx.db.read() as s:
        return profile_out(_get(s, name))


@router.post("/api/v1/profiles", status_code=201)
def create_profile(
    body: ProfileIn,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    try:
        with ctx.db.write() as s:
            kernel = _check(s, body.name, body, trusted_keys(ctx.settings))
            now = utcnow()
            p = BootProfile(
                id=str(uuid.uuid4()),
                name=body.name,
                selector=body.selector,
                kernel=kernel,
                image=body.image,
                initrds=body.initrds,
                args=body.args,
                agent=body.agent,
                created_at=now,
                updated_at=now,
                created_by=who.actor,
            )
            s.add(p)
            s.flush()
            inventory.record(
                s,
                actor=who.actor,
                kind=EventKind.BOOT_PROFILE_CREATED,
                message=f"boot profile {p.name} created",
                data={"profile": p.name},
            )
            return profile_out(p)
    except IntegrityError:
        raise Conflict(message=f"profile {body.name!r} already exists") from None


@router.put("/api/v1/profiles/{name}")
def replace_profile(
    name: str,
    body: ProfileBody,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    with ctx.db.write() as s:
        p = _get(s, name)
        kernel = _check(s, name, body, trusted_keys(ctx.settings))
        p.selector, p.kernel, p.image, p.initrds, p.args = (
            body.selector,
            kernel,
            body.image,
            body.initrds,
            body.args,
        )
        p.agent, p.updated_at = body.agent, utcnow()
        inventory.record(
            s,
            actor=who.actor,
            kind=EventKind.BOOT_PROFILE_UPDATED,
            message=f"boot profile {name} updated",
            data={"profile": name},
        )
        s.flush()
        return profile_out(p)


@router.delete("/api/v1/profiles/{name}")
def delete_profile(
    name: str,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    with ctx.db.write() as s:
        p = _get(s, name)
        out = profile_out(p)
        s.delete(p)
        inventory.record(
            s,
            actor=who.actor,
            kind=EventKind.BOOT_PROFILE_DELETED,
            message=f"boot profile {name} deleted",
            data={"profile": name},
        )
        return out
