"""``/api/v1/assets``: boot assets (kernels, initrds) for operators.

An upload is the raw body with its SHA-256 stated in the query: the file is kept only when the
body hashes to it (``server.boot.assets``). An asset a profile names cannot be deleted (409
naming the profiles). Firmware downloads them from ``/assets/NAME`` (``server.api.boot``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from server.api.auth import Principal
from server.api.deps import Context, context, operator, reader
from server.boot import profiles
from server.boot.assets import AssetError, AssetStore, check_name
from server.errors import Conflict, Invalid, NotFound, TooLarge
from server.inventory import machines as inventory
from server.inventory.models import BootAsset, BootProfile, utcnow
from server.types import EventKind

router = APIRouter(tags=["boot"])


def asset_out(a: BootAsset) -> dict[str, Any]:
    return {
        "name": a.name,
        "size": a.size,
        "sha256": a.sha256,
        "url": f"/assets/{a.name}",
        "created_at": inventory.iso(a.created_at),
        "created_by": a.created_by,
    }


def _asset_name(name: str) -> str:
    try:
        return check_name(name)
    except AssetError as exc:
        raise Invalid(message=f"name: {exc.reason}", details={"field": "name"}) from None


@router.get("/api/v1/assets")
def list_assets(
    ctx: Annotated[Context, Depends(context)], _: Annotated[Principal, Depends(reader)]
) -> list[dict[str, Any]]:
    with ctx.db.read() as s:
        return [asset_out(a) for a in s.scalars(select(BootAsset).order_by(BootAsset.name))]


@router.get("/api/v1/assets/{name}")
def get_asset(
    name: str, ctx: Annotated[Context, Depends(context)], _: Annotated[Principal, Depends(reader)]
) -> dict[str, Any]:
    with ctx.db.read() as s:
        a = s.get(BootAsset, _asset_name(name))
        if a is None:
            raise NotFound(kind="asset", key=name)
        return asset_out(a)


@router.put("/api/v1/assets/{name}", status_code=201)
async def upload_asset(
    name: str,
    request: Request,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
    sha256: Annotated[
        str,
        Query(
            min_length=64,
            max_length=64,
            pattern=r"^[0-9a-f]{64}$",
            description="SHA-256 of the body (hex); a mismatch keeps nothing",
        ),
    ],
) -> dict[str, Any]:
    """Upload (or replace) an asset: raw body, stated SHA-256 verified before it is kept."""
    _asset_name(name)
    store: AssetStore = request.app.state.assets
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > store.max_bytes:
        raise TooLarge(message=f"asset larger than {store.max_bytes} bytes")
    try:
        size, digest = await store.save(name, request.stream(), sha256)
    except AssetError as exc:
        if "larger" in exc.reason:
            raise TooLarge(message=exc.reason) from None
        raise Invalid(message=f"sha256: {exc.reason}", details={"field": "sha256"}) from None

    def record() -> dict[str, Any]:
        with ctx.db.write() as s:
            a = s.get(BootAsset, name)
            if a is None:
                a = BootAsset(name=name)
                s.add(a)
            a.size, a.sha256, a.created_at, a.created_by = size, digest, utcnow(), who.actor
            inventory.record(
                s,
                actor=who.actor,
                kind=EventKind.BOOT_ASSET_UPLOADED,
                message=f"boot asset {name} uploaded ({size} bytes)",
                data={"asset": name, "size": size, "sha256": digest},
            )
            s.flush()
            return asset_out(a)

    return await run_in_threadpool(record)


@router.delete("/api/v1/assets/{name}")
def delete_asset(
    name: str,
    request: Request,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    with ctx.db.write() as s:
        a = s.get(BootAsset, _asset_name(name))
        if a is None:
            raise NotFound(kind="asset", key=name)
        users = [
            p.name
            for p in s.scalars(select(BootProfile))
            if name in profiles.asset_names(p.kernel, p.initrds)
        ]
        if users:
            raise Conflict(
                message=f"asset {name!r} is used by profile(s) {', '.join(sorted(users))}"
            )
        out = asset_out(a)
        s.delete(a)
        inventory.record(
            s,
            actor=who.actor,
            kind=EventKind.BOOT_ASSET_DELETED,
            message=f"boot asset {name} deleted",
            data={"asset": name},
        )
    store: AssetStore = request.app.state.assets
    store.delete(name)
    return out
