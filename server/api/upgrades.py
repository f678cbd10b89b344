"""``/api/v1/upgrades``: rolling OS upgrades of a selection of machines (see docs/upgrades.md).

``POST`` creates a rollout (or, with ``?dry_run=true``, only shows its batches); the runner
(``server.rollouts.runner``, one replica under a lease) carries it out. ``preserve`` has no
default: every request says whether EPHEMERAL (``/var``) is kept, and every response repeats it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import Field, SecretStr, field_validator
from sqlalchemy.exc import IntegrityError

from server.api.auth import Principal
from server.api.deps import Context, context, operator, reader
from server.api.images import trusted_keys
from server.api.schemas import Strict
from server.boot import images
from server.errors import Invalid
from server.inventory.selectors import SelectorError, parse
from server.inventory.validation import check_label_key
from server.rollouts import store
from server.rollouts.planner import BatchPolicy

router = APIRouter(prefix="/api/v1/upgrades", tags=["upgrades"])

Count = int | Annotated[str, Field(pattern=r"^([1-9][0-9]?|100)%$")]


class HookIn(Strict):
    url: str = Field(pattern=r"^https?://[^\s/]+(/\S*)?$", max_length=2048)
    """Called with POST and a JSON body ``{"event", "rollout", "machine", "image"}``."""
    timeout_seconds: float = Field(default=30, gt=0, le=600)
    secret: SecretStr | None = None
    """HMAC-SHA256 key: the body's MAC is sent as ``X-Bronze-Signature: sha256=HEX``."""


class HooksIn(Strict):
    before: HookIn | None = None
    """Before a machine is upgraded (e.g. drain its Kubernetes node); failure fails the machine."""
    after: HookIn | None = None
    """After it is healthy on the new image (e.g. uncordon)."""


class UpgradeIn(Strict):
    image: str = Field(min_length=1, max_length=63)
    selector: str = Field(min_length=1, max_length=4096)
    preserve: bool
    """Keep EPHEMERAL (/var) byte for byte (true), or wipe it on the new image's first boot."""
    batch_size: Count = 1
    max_unavailable: Count | None = None
    failure_domain: str | None = Field(default=None, max_length=253)
    canary: int | list[str] = 0
    control_plane: str = Field(default="role=control-plane", max_length=4096)
    failure_budget: int = Field(default=0, ge=0)
    health_timeout_seconds: int = Field(default=600, ge=10, le=86_400)
    on_abort: Literal["finish", "rollback"] = "finish"
    """What abort does to machines in flight: let them finish, or fail them back to last good."""
    hooks: HooksIn = Field(default_factory=HooksIn)

    @field_validator("failure_domain")
    @classmethod
    def _domain_is_a_label_key(cls, v: str | None) -> str | None:
        return None if v is None else check_label_key(v)


def _policy(body: UpgradeIn) -> BatchPolicy:
    canary = tuple(body.canary) if isinstance(body.canary, list) else body.canary
    return BatchPolicy(
        batch_size=body.batch_size,
        max_unavailable=body.max_unavailable,
        failure_domain=body.failure_domain,
        canary=canary,
        control_plane=body.control_plane,
    )


def _spec(body: UpgradeIn, ctx: Context) -> dict[str, Any]:
    spec = body.model_dump(exclude={"hooks"})
    hooks: dict[str, Any] = {}
    for when in ("before", "after"):
        h: HookIn | None = getattr(body.hooks, when)
        if h is not None:
            secret = h.secret.get_secret_value() if h.secret else None
            hooks[when] = {
                "url": h.url,
                "timeout_seconds": h.timeout_seconds,
                "secret_enc": ctx.secrets.encrypt(secret) if secret else None,
            }
    spec["hooks"] = hooks
    return spec


def public_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as shown: hook secrets reduced to whether one is set."""
    hooks = {
        when: {
            "url": h["url"],
            "timeout_seconds": h["timeout_seconds"],
            "signed": bool(h["secret_enc"]),
        }
        for when, h in spec.get("hooks", {}).items()
    }
    return {**spec, "hooks": hooks}


def _view(s: Any, r: Any) -> dict[str, Any]:
    v = store.view(s, r)
    v["spec"] = public_spec(v["spec"])
    v["preserve"] = v["spec"]["preserve"]
    return v


@router.post("", status_code=201)
def create_upgrade(
    body: UpgradeIn,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(operator)],
    response: Response,
    dry_run: bool = False,
) -> dict[str, Any]:
    """201 with the rollout; ``dry_run=true``: 200 with the batches in order, nothing written."""
    try:
        reqs = parse(body.selector)
    except SelectorError as exc:
        raise Invalid(message=f"selector: {exc}", details={"field": "selector"}) from None
    try:
        with ctx.db.write() as s:
            image = images.get_for_use(s, body.image, trusted_keys(ctx.settings))
            batches, machines = store.plan(s, reqs, _policy(body))
            if dry_run:
                response.status_code = 200
                return {
                    "dry_run": True,
                    "image": image.name,
                    "preserve": body.preserve,
                    "batches": [
                        {
                            **b,
                            "machines": [
                                {"id": m, "name": machines[m].name} for m in b["machines"]
                            ],
                        }
                        for b in store.batches_doc(batches)
                    ],
                }
            r = store.create(
                s,
                kind="upgrade",
                image=image.name,
                selector=body.selector,
                spec=_spec(body, ctx),
                batches=batches,
                machines=machines,
                actor=who.actor,
            )
            return _view(s, r)
    except IntegrityError:
        with ctx.db.read() as s:
            conflict = store.overlap(s, [m for b in batches for m in b.machines])
        raise conflict or Invalid(message="rollout could not be created, try again") from None


@router.get("")
def list_upgrades(
    ctx: Annotated[Context, Depends(context)],
    _: Annotated[Principal, Depends(reader)],
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    with ctx.db.read() as s:
        rows = store.list_rollouts(s, limit, None)
        return {"items": [_view(s, r) for r in rows], "next_cursor": None}


@router.get("/{rollout_id}")
def get_upgrade(
    rollout_id: str,
    ctx: Annotated[Context, Depends(context)],
    _: Annotated[Principal, Depends(reader)],
) -> dict[str, Any]:
    with ctx.db.read() as s:
        return _view(s, store.get(s, rollout_id))


def _control(verb: str):  # type: ignore[no-untyped-def]
    def handler(
        rollout_id: str,
        ctx: Annotated[Context, Depends(context)],
        who: Annotated[Principal, Depends(operator)],
    ) -> dict[str, Any]:
        with ctx.db.write() as s:
            r = store.control(s, store.get(s, rollout_id), verb, who.actor)
            return _view(s, r)

    handler.__name__ = f"{verb}_upgrade"
    handler.__doc__ = {
        "pause": "Start no more machines; machines in flight finish.",
        "resume": "Go on after a pause.",
        "abort": "Start no more machines; in-flight ones finish or roll back (on_abort).",
    }[verb]
    return handler


for _verb in ("pause", "resume", "abort"):
    router.add_api_route(f"/{{rollout_id}}/{_verb}", _control(_verb), methods=["POST"])
