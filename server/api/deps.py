"""Shared FastAPI dependencies: the server context and the authenticated principal."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request

from server.auth import Principal, authenticate
from server.db import Database
from server.errors import Forbidden, Unauthenticated
from server.secretbox import SecretBox
from server.settings import ServerSettings
from server.types import Role


@dataclass
class Context:
    """Everything a request handler may need; built once in the composition root."""

    settings: ServerSettings
    db: Database
    secrets: SecretBox


def context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


def _principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated()
    with context(request).db.read() as session:
        principal = authenticate(session, token.strip())
    if principal is None:
        raise Unauthenticated()
    return principal


def require(role: Role, action: str) -> Callable[[Request], Principal]:
    """Dependency: the caller's token must carry at least ``role``."""

    def dep(request: Request) -> Principal:
        principal = _principal(request)
        if not principal.can(role):
            raise Forbidden(role=principal.role.value, action=action)
        return principal

    return dep


reader = require(Role.READER, "read")
operator = require(Role.OPERATOR, "change machines")
admin = require(Role.ADMIN, "manage tokens")
