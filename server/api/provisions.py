"""``/api/v1/provisions``: from registered machines to installed, configured, ready ones
(docs/provisioning.md).

``POST`` plans the selection and writes a provisioning rollout (``?dry_run=true``: only the
machines and what each will go through); the rollout runner carries it out one step at a time,
each step persisted before it is acted on. ``POST .../cancel`` starts no more machines (machines
in flight finish their steps; nothing is powered off).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import Field, field_validator
from sqlalchemy.exc import IntegrityError

from server.api.auth import Principal
from server.api.deps import Context, context, operator, reader
from server.api.images import trusted_keys
from server.api.schemas import Strict
from server.boot import images
from server.errors import Invalid, NotFound
from server.inventory import machines as inventory
from server.inventory.selectors import Requirement, SelectorError, parse
from server.rollouts import deprovisioning, provisioning, store
from server.rollouts.planner import BatchPolicy
from server.rollouts.provision import parse_expectation

router = APIRouter(prefix="/api/v1/provisions", tags=["provisions"])


class InstallIn(Strict):
    disk: str = Field(min_length=6, max_length=255, pattern=r"^/dev/[A-Za-z0-9/_.:-]+$")
    """The install target on every machine (``/dev/vda``, a ``/dev/disk/by-id/`` path)."""


class TimeoutsIn(Strict):
    netboot_seconds: int = Field(default=300, ge=10, le=86_400)
    """From power-on to the agent enrolled and connected (each attempt)."""
    configure_seconds: int = Field(default=300, ge=10, le=86_400)
    install_seconds: int = Field(default=1800, ge=10, le=86_400)
    boot_seconds: int = Field(default=600, ge=10, le=86_400)
    """From the install's answer to the agent back from the disk."""


class ProvisionIn(Strict):
    selector: str = Field(min_length=1, max_length=4096)
    image: str = Field(min_length=1, max_length=63)
    install: InstallIn | None = None
    """Write the image to this disk; none: diskless (the machines netboot the image)."""
    expect: list[str] = Field(default_factory=list, max_length=32)
    """Hardware checks against the agent's inventory: ``"memory_gib >= 64"``, ``"disks >= 2"``,
    ``"nics >= 2"``, ``"cpus >= 1"``, ``"disk_gib >= 100"``."""
    max_parallel: int = Field(default=10, ge=1, le=10_000)
    stagger_ms: int = Field(default=0, ge=0, le=600_000)
    """Between power-ons started in one pass (an inrush limit for a rack's PDUs)."""
    retries: int = Field(default=2, ge=0, le=10)
    """Power attempts after the first for a machine that does not come up."""
    retry_backoff_seconds: float = Field(default=10, ge=0, le=3600)
    timeouts: TimeoutsIn = Field(default_factory=TimeoutsIn)

    @field_validator("expect")
    @classmethod
    def _expectations(cls, v: list[str]) -> list[str]:
        for text in v:
            parse_expectation(text)  # ValueError -> 422 naming it
        return v


def _view(s: Any, r: Any) -> dict[str, Any]:
    """A provision (or a deprovision: ``bronze provision status/watch`` show both)."""
    if r.kind not in (provisioning.KIND, deprovisioning.DEPROVISION):
        raise NotFound(message=f"provision {r.id!r} not found")
    return store.view(s, r)


@router.post("", status_code=201)
def create_provision(
    body: ProvisionIn,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
    response: Response,
    dry_run: bool = False,
) -> dict[str, Any]:
    """201 with the rollout; ``dry_run=true``: 200 with the machines, nothing written. 422 when
    a machine is not ``registered``/``failed``/``provisioning``; 409 when one is held by another
    unfinished rollout."""
    try:
        reqs = parse(body.selector)
    except SelectorError as exc:
        raise Invalid(message=f"selector: {exc}", details={"field": "selector"}) from None
    policy = BatchPolicy(batch_size="100%", control_plane="")
    try:
        with ctx.db.write() as s:
            image = images.get_for_use(s, body.image, trusted_keys(ctx.settings))
            batches, machines = store.plan(s, reqs, policy, store.PROVISIONABLE, verb="provisioned")
            if dry_run:
                response.status_code = 200
                return {
                    "dry_run": True,
                    "image": image.name,
                    "machines": [
                        {
                            "id": m.id,
                            "name": m.name,
                            "bmc": m.bmc_driver is not None,
                            "steps": _steps(body, m.boot_from, m.bmc_driver is not None),
                        }
                        for m in sorted(machines.values(), key=lambda m: m.name)
                    ],
                }
            r = store.create(
                s,
                kind=provisioning.KIND,
                image=image.name,
                selector=body.selector,
                spec=body.model_dump(),
                batches=batches,
                machines=machines,
                actor=who.actor,
            )
            return store.view(s, r)
    except IntegrityError:
        with ctx.db.read() as s:
            conflict = store.overlap(s, [m for b in batches for m in b.machines])
        raise conflict or Invalid(message="provision could not be created, try again") from None


def _steps(body: ProvisionIn, boot_from: str, has_bmc: bool) -> list[str]:
    power = "power on (PXE once) via BMC" if has_bmc else "operator powers on (no BMC)"
    steps = [power, "netboot + agent enrolls"]
    if body.expect:
        steps.append("hardware checks: " + ", ".join(body.expect))
    steps.append("config applied")
    if body.install is not None and boot_from != "network":
        steps += [f"install to {body.install.disk}", "boot from disk"]
    return [*steps, "ready"]


@router.get("")
def list_provisions(
    ctx: Annotated[Context, Depends(context)],
    _: Annotated[Principal, Depends(reader)],
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    with ctx.db.read() as s:
        rows = store.list_rollouts(s, limit, None, kind=provisioning.KIND)
        return {"items": [store.view(s, r) for r in rows], "next_cursor": None}


@router.get("/{rollout_id}")
def get_provision(
    rollout_id: str,
    ctx: Annotated[Context, Depends(context)],
    _: Annotated[Principal, Depends(reader)],
) -> dict[str, Any]:
    with ctx.db.read() as s:
        return _view(s, store.get(s, rollout_id))


def _control(verb: str, store_verb: str):  # type: ignore[no-untyped-def]
    def handler(
        rollout_id: str,
        ctx: Annotated[Context, Depends(context)],
        who: Annotated[Principal, Depends(operator)],
    ) -> dict[str, Any]:
        with ctx.db.write() as s:
            r = store.get(s, rollout_id)
            _view(s, r)  # 404 for another kind
            return store.view(s, store.control(s, r, store_verb, who.actor))

    handler.__name__ = f"{verb}_provision"
    handler.__doc__ = {
        "pause": "Start no more machines; machines in flight go on.",
        "resume": "Go on after a pause.",
        "cancel": "Start no more machines (they are skipped); machines in flight finish their "
        "steps. Nothing is powered off.",
    }[verb]
    return handler


for _verb, _store_verb in (("pause", "pause"), ("resume", "resume"), ("cancel", "abort")):
    router.post(f"/{{rollout_id}}/{_verb}")(_control(_verb, _store_verb))


# --- deprovisioning -------------------------------------------------------------------------------

deprovisions = APIRouter(tags=["provisions"])


class DeprovisionIn(Strict):
    wipe: Literal["none", "quick", "full"]
    """``none``: forget only; ``quick``: signatures and partition tables; ``full``: every byte."""
    disk: str | None = Field(default=None, max_length=255, pattern=r"^/dev/[A-Za-z0-9/_.:-]+$")
    """The disk to wipe; none: the one holding the partition labelled STATE."""
    wipe_timeout_seconds: int = Field(default=3600, ge=10, le=7 * 86_400)
    max_parallel: int = Field(default=50, ge=1, le=10_000)


class DeprovisionSelectorIn(DeprovisionIn):
    selector: str = Field(min_length=1, max_length=4096)


def _deprovision(
    ctx: Context,
    who: Principal,
    reqs: Sequence[Requirement],
    selector: str,
    body: DeprovisionIn,
    key: str | None = None,
) -> dict[str, Any]:
    policy = BatchPolicy(batch_size="100%", control_plane="")
    try:
        with ctx.db.write() as s:
            ids = [inventory.get_machine(s, key).id] if key is not None else None
            batches, machines = store.plan(
                s, reqs, policy, deprovisioning.DEPROVISIONABLE, verb="deprovisioned", ids=ids
            )
            r = store.create(
                s,
                kind=deprovisioning.DEPROVISION,
                image=None,
                selector=selector,
                spec=body.model_dump(exclude={"selector"}),
                batches=batches,
                machines=machines,
                actor=who.actor,
            )
            return store.view(s, r)
    except IntegrityError:
        with ctx.db.read() as s:
            conflict = store.overlap(s, [m for b in batches for m in b.machines])
        raise conflict or Invalid(message="deprovision could not be created, try again") from None


@deprovisions.post("/api/v1/machines/{key}/deprovision", status_code=201)
def deprovision_machine(
    key: str,
    body: DeprovisionIn,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    """Wipe the machine's disk through its agent (``wipe``), then phase ``registered``, image
    cleared, agent certificates revoked (refused from then on). 201 with the rollout to follow
    at ``GET /api/v1/deprovisions/{id}``."""
    return _deprovision(ctx, who, (), f"machine {key}", body, key=key)


@deprovisions.post("/api/v1/deprovisions", status_code=201)
def deprovision_selection(
    body: DeprovisionSelectorIn,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
) -> dict[str, Any]:
    """Deprovision every machine the selector matches (as ``.../deprovision`` does one)."""
    try:
        reqs = parse(body.selector)
    except SelectorError as exc:
        raise Invalid(message=f"selector: {exc}", details={"field": "selector"}) from None
    return _deprovision(ctx, who, reqs, body.selector, body)


@deprovisions.get("/api/v1/deprovisions/{rollout_id}")
def get_deprovision(
    rollout_id: str,
    ctx: Annotated[Context, Depends(context)],
    _: Annotated[Principal, Depends(reader)],
) -> dict[str, Any]:
    with ctx.db.read() as s:
        r = store.get(s, rollout_id)
        if r.kind != deprovisioning.DEPROVISION:
            raise NotFound(message=f"deprovision {rollout_id!r} not found")
        return store.view(s, r)
