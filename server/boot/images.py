"""OS images: versioned kernel + initrds + default args, what machines netboot and install.

An image names boot assets already uploaded (``/api/v1/assets``); creating it freezes each
file's SHA-256 into a manifest (``agent.image_manifest``), so a later re-upload of an asset under
the same name cannot change what the image is: the agent checks every byte it installs against
the manifest. A signature (Ed25519 over the canonical manifest) can be given at creation or
attached later (``PUT .../signature``, for signing offline); with trusted keys configured
(``BRONZE_IMAGE_TRUSTED_KEYS``) a signature must verify, and an unsigned image cannot be used.

An image named by a machine (``machines.image``), a boot profile or an unfinished rollout cannot
be deleted (409 naming the users).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from agent.image_manifest import (
    ImageFile,
    Manifest,
    ManifestError,
    TrustedKey,
    verify,
)
from server.errors import Conflict, Invalid, NotFound
from server.inventory import machines as inventory
from server.inventory.models import BootAsset, BootProfile, Image, Machine, utcnow
from server.rollouts.decide import RolloutStatus
from server.rollouts.models import Rollout
from server.types import EventKind

_TERMINAL = [s.value for s in RolloutStatus if s.terminal]


def manifest_of(image: Image) -> Manifest:
    doc = image.manifest
    return Manifest(
        name=doc["name"],
        version=doc["version"],
        kernel=ImageFile(doc["kernel"]["file"], doc["kernel"]["sha256"]),
        initrds=tuple(ImageFile(f["file"], f["sha256"]) for f in doc["initrds"]),
        args=tuple(doc["args"]),
    )


def view(image: Image) -> dict[str, Any]:
    m = manifest_of(image)
    return {
        "name": image.name,
        "version": image.version,
        "kernel": {"asset": m.kernel.file, "sha256": m.kernel.sha256},
        "initrds": [{"asset": f.file, "sha256": f.sha256} for f in m.initrds],
        "args": list(m.args),
        "digest": image.digest,
        "signed": image.signature is not None,
        "signed_by": image.signed_by,
        "created_at": inventory.iso(image.created_at),
        "created_by": image.created_by,
    }


def get(s: Session, name: str) -> Image:
    image = s.get(Image, name)
    if image is None:
        raise NotFound(kind="image", key=name)
    return image


def _file(s: Session, where: str, asset: str) -> ImageFile:
    row = s.get(BootAsset, asset)
    if row is None:
        raise Invalid(
            message=f"{where}: asset {asset!r} not found (upload it first)",
            details={"field": where, "reason": "asset not found"},
        )
    return ImageFile(asset, row.sha256)


def _verify(manifest: Manifest, signature: str, keys: Sequence[TrustedKey]) -> str:
    if not keys:
        raise Invalid(
            message="signature given but no trusted keys are configured "
            "(BRONZE_IMAGE_TRUSTED_KEYS): it cannot be checked",
            details={"field": "signature", "reason": "no trusted keys"},
        )
    try:
        return verify(manifest, signature, keys)
    except ManifestError as exc:
        raise Invalid(
            message=f"signature: {exc}", details={"field": "signature", "reason": str(exc)}
        ) from None


def create(
    s: Session,
    *,
    name: str,
    version: str,
    kernel: str,
    initrds: Sequence[str],
    args: Sequence[str],
    signature: str | None,
    keys: Sequence[TrustedKey],
    actor: str,
) -> Image:
    if s.get(Image, name) is not None:
        raise Conflict(message=f"image {name!r} already exists", details={"image": name})
    manifest = Manifest(
        name=name,
        version=version,
        kernel=_file(s, "kernel", kernel),
        initrds=tuple(_file(s, f"initrds[{i}]", a) for i, a in enumerate(initrds)),
        args=tuple(args),
    )
    signed_by = _verify(manifest, signature, keys) if signature is not None else None
    image = Image(
        name=name,
        version=version,
        manifest=_doc(manifest),
        digest=manifest.digest(),
        signature=signature,
        signed_by=signed_by,
        created_at=utcnow(),
        created_by=actor,
    )
    s.add(image)
    s.flush()
    inventory.record(
        s,
        actor=actor,
        kind=EventKind.IMAGE_CREATED,
        message=f"image {name} {version} created"
        + (f", signed by {signed_by}" if signed_by else ""),
        data={"image": name, "version": version, "digest": image.digest},
    )
    return image


def _doc(m: Manifest) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(m.canonical())
    return doc


def attach_signature(
    s: Session, image: Image, signature: str, keys: Sequence[TrustedKey], actor: str
) -> Image:
    image.signed_by = _verify(manifest_of(image), signature, keys)
    image.signature = signature
    inventory.record(
        s,
        actor=actor,
        kind=EventKind.IMAGE_SIGNED,
        message=f"image {image.name} signed by {image.signed_by}",
        data={"image": image.name, "key": image.signed_by},
    )
    return image


def require_usable(image: Image, keys: Sequence[TrustedKey], *, field: str = "image") -> None:
    """422 when trusted keys are configured and ``image`` carries no verified signature."""
    if keys and image.signed_by is None:
        raise Invalid(
            message=f"{field}: image {image.name!r} is not signed by a trusted key",
            details={"field": field, "reason": "unsigned image"},
        )


def users(s: Session, name: str) -> dict[str, list[str]]:
    """Who names the image: machines, boot profiles, unfinished rollouts (first 10 of each)."""
    found = {
        "machines": list(
            s.scalars(
                select(Machine.name)
                .where(or_(Machine.image == name, Machine.trial_image == name))
                .limit(10)
            )
        ),
        "profiles": list(
            s.scalars(select(BootProfile.name).where(BootProfile.image == name).limit(10))
        ),
        "rollouts": list(
            s.scalars(
                select(Rollout.id)
                .where(Rollout.image == name, Rollout.status.not_in(_TERMINAL))
                .limit(10)
            )
        ),
    }
    return {k: v for k, v in found.items() if v}


def delete(s: Session, name: str, actor: str) -> dict[str, Any]:
    image = get(s, name)
    in_use = users(s, name)
    if in_use:
        who = "; ".join(f"{k}: {', '.join(v)}" for k, v in in_use.items())
        raise Conflict(message=f"image {name!r} is in use ({who})", details={"in_use": in_use})
    out = view(image)
    s.delete(image)
    inventory.record(
        s,
        actor=actor,
        kind=EventKind.IMAGE_DELETED,
        message=f"image {name} deleted",
        data={"image": name},
    )
    return out


def get_for_use(s: Session, name: str, keys: Sequence[TrustedKey], field: str = "image") -> Image:
    """The image a plan, profile or config names: 422 when missing or unsigned under keys."""
    image = s.get(Image, name)
    if image is None:
        raise Invalid(
            message=f"{field}: image {name!r} not found",
            details={"field": field, "reason": "image not found"},
        )
    require_usable(image, keys, field=field)
    return image


def image_boot(image: Image, profile_args: Sequence[str]) -> tuple[str, list[str], list[str]]:
    """What a profile naming ``image`` boots: its kernel and initrds (asset names), its default
    kernel args followed by the profile's own."""
    m = manifest_of(image)
    return m.kernel.file, [f.file for f in m.initrds], [*m.args, *profile_args]
