"""``/api/v1/tokens``: API token management (admin only)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from server.api.auth import Principal, create_token
from server.api.deps import Context, admin, context
from server.api.schemas import TokenCreate, TokenCreated, TokenOut
from server.errors import Conflict, NotFound
from server.inventory import machines as inventory
from server.inventory.models import ApiToken, utcnow
from server.types import EventKind, Role

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])


def token_out(t: ApiToken) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "role": t.role,
        "created_at": inventory.as_utc(t.created_at),
        "created_by": t.created_by,
        "revoked_at": t.revoked_at and inventory.as_utc(t.revoked_at),
    }


@router.post("", status_code=201, response_model=TokenCreated)
def create(
    body: TokenCreate,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(admin)],
) -> dict[str, Any]:
    try:
        with ctx.db.write() as s:
            row, plaintext = create_token(s, name=body.name, role=body.role, created_by=who.actor)
            inventory.record(
                s,
                actor=who.actor,
                kind=EventKind.TOKEN_CREATED,
                message=f"token {row.name} ({row.role}) created",
                data={"name": row.name, "role": row.role},
            )
            return {**token_out(row), "token": plaintext}
    except IntegrityError as exc:
        raise inventory.conflict_from(exc) from None


@router.get("", response_model=list[TokenOut])
def list_tokens(
    ctx: Annotated[Context, Depends(context)],
    _: Annotated[Principal, Depends(admin)],
) -> list[dict[str, Any]]:
    with ctx.db.read() as s:
        return [token_out(t) for t in s.scalars(select(ApiToken).order_by(ApiToken.name))]


@router.delete("/{name}", response_model=TokenOut)
def revoke(
    name: str,
    ctx: Annotated[Context, Depends(context)],
    who: Annotated[Principal, Depends(admin)],
) -> dict[str, Any]:
    with ctx.db.write() as s:
        row = s.scalar(select(ApiToken).where(ApiToken.name == name))
        if row is None:
            raise NotFound(kind="token", key=name)
        if row.revoked_at is not None:
            raise Conflict(message=f"token {name!r} is already revoked")
        if row.role == Role.ADMIN.value:
            admins = s.scalar(
                select(func.count())
                .select_from(ApiToken)
                .where(ApiToken.role == Role.ADMIN.value, ApiToken.revoked_at.is_(None))
            )
            if admins == 1:
                raise Conflict(message="refusing to revoke the last admin token")
        row.revoked_at = utcnow()
        inventory.record(
            s,
            actor=who.actor,
            kind=EventKind.TOKEN_REVOKED,
            message=f"token {name} revoked",
            data={"name": name},
        )
        return token_out(row)
