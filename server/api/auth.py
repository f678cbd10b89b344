"""Bearer-token authentication and role checks.

Tokens bronze makes are ``brz_`` + 43 url-safe characters (256 random bits); a token seeded from
``BRONZE_ADMIN_TOKEN`` may be any 32-128 character string the operator chose (settings refuse a
shorter one at start). Only their SHA-256 is stored, so a database dump reveals no usable token;
a high-entropy token needs no salt or slow KDF. The lookup is by hash (an index probe), so it
leaks nothing through timing. Anything shorter than the shortest token that can exist, or longer
than the longest, is refused without a lookup.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.inventory.models import ApiToken, utcnow
from server.settings import ADMIN_TOKEN_MAX, ADMIN_TOKEN_MIN
from server.types import Role

TOKEN_PREFIX = "brz_"  # noqa: S105 - a prefix, not a secret


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name and role."""

    token_id: str
    name: str
    role: Role

    @property
    def actor(self) -> str:
        return f"token:{self.name}"

    def can(self, role: Role) -> bool:
        if role is Role.BOOT:  # least privilege: boot is not below reader, it is beside it
            return self.role in (Role.BOOT, Role.ADMIN)
        return self.role.rank >= role.rank


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def authenticate(session: Session, token: str) -> Principal | None:
    if not ADMIN_TOKEN_MIN <= len(token) <= ADMIN_TOKEN_MAX:
        return None
    row = session.scalar(
        select(ApiToken).where(
            ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None)
        )
    )
    if row is None:
        return None
    return Principal(row.id, row.name, Role(row.role))


def create_token(
    session: Session, *, name: str, role: Role, created_by: str, token: str | None = None
) -> tuple[ApiToken, str]:
    """Insert a token; returns the row and the plaintext (shown once, never stored)."""
    plaintext = token or new_token()
    row = ApiToken(
        id=str(uuid.uuid4()),
        name=name,
        role=role.value,
        token_hash=hash_token(plaintext),
        created_by=created_by,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row, plaintext
