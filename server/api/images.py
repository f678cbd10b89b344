"""``/api/v1/images``: versioned OS images (kernel + initrds + default args) for operators.

Creating an image freezes the SHA-256 of its assets; see ``server.boot.images``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import Field

from agent.image_manifest import TrustedKey, parse_keys
from server.api.auth import Principal
from server.api.deps import Context, context, operator, reader
from server.api.schemas import Strict
from server.boot import images
from server.inventory.models import Image
from server.settings import ServerSettings

router = APIRouter(tags=["images"])

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$"
ASSET_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class ImageIn(Strict):
    name: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN)
    version: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
    kernel: str = Field(pattern=ASSET_PATTERN)
    """Asset name of the kernel."""
    initrds: list[Annotated[str, Field(pattern=ASSET_PATTERN)]] = Field(
        default_factory=list, max_length=16
    )
    args: list[Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^\S+$")]] = Field(
        default_factory=list, max_length=128
    )
    """Default kernel arguments, one per item (no spaces)."""
    signature: str | None = Field(default=None, max_length=256)
    """Base64 Ed25519 signature of the canonical manifest (``GET .../manifest``)."""


class SignatureIn(Strict):
    signature: str = Field(min_length=1, max_length=256)


def trusted_keys(settings: ServerSettings) -> tuple[TrustedKey, ...]:
    return parse_keys(settings.image_trusted_keys)


@router.get("/api/v1/images")
def list_images(
    ctx: Annotated[Context, Depends(context)], _: Annotated[Principal, Depends(reader)]
) -> dict[str, Any]:
    with ctx.db.read() as s:
        rows = s.query(Image).order_by(Image.name).all()
        return {"items": [images.view(i) for i in rows], "next_cursor": None}


@router.get("/api/v1/images/{name}")
def get_image(
    name: str, ctx: Annotated[Context, Depends(context)], _: Annotated[Principal, Depends(reader)]
) -> dict[str, Any]:
    with ctx.db.read() as s:
        image = images.get(s, name)
        return {**images.view(image), "used_by": images.users(s, name)}


@router.get("/api/v1/images/{name}/manifest")
def get_manifest(
    name: str, ctx: Annotated[Context, Depends(context)], _: Annotated[Principal, Depends(reader)]
) -> dict[str, Any]:
    """The canonical manifest (what a signature covers), as a string and as a document."""
    with ctx.db.read() as s:
        m = images.manifest_of(images.get(s, name))
        return {"canonical": m.canonical().decode(), "digest": m.digest()}


@router.post("/api/v1/images", status_code=201)
def create_image(
    body: ImageIn,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    with ctx.db.write() as s:
        image = images.create(
            s,
            name=body.name,
            version=body.version,
            kernel=body.kernel,
            initrds=body.initrds,
            args=body.args,
            signature=body.signature,
            keys=trusted_keys(ctx.settings),
            actor=who.actor,
        )
        return images.view(image)


@router.put("/api/v1/images/{name}/signature")
def sign_image(
    name: str,
    body: SignatureIn,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    with ctx.db.write() as s:
        image = images.get(s, name)
        images.attach_signature(s, image, body.signature, trusted_keys(ctx.settings), who.actor)
        return images.view(image)


@router.delete("/api/v1/images/{name}")
def delete_image(
    name: str,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    with ctx.db.write() as s:
        return images.delete(s, name, who.actor)
