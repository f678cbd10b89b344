"""Who is using the console, and proof that a mutation came from the console's own page.

- **Session**: the operator signs in with an API token; it is kept in the ``bronze_session``
  cookie (``HttpOnly``: page script cannot read it; ``SameSite=Strict``: no other site's page
  makes the browser send it; ``Path=/ui``; ``Secure`` over HTTPS). It is checked like a bearer
  token on every request (``server.api.deps``: the same roles, revocation seen at once). It never
  appears in a page, a URL or a log line.
- **CSRF**: every form that changes something carries ``csrf``, an HMAC of the session token's
  hash under a key derived from the server's secret key (the same on every replica). A mutation
  is refused (403 ``csrf``) unless the value matches, and also when the request's ``Origin`` is
  another site's. The role is checked after that, as the API does (403 ``forbidden``).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from server.api.auth import Principal, authenticate, hash_token
from server.api.deps import Context
from server.errors import ApiError, Forbidden
from server.types import Role

COOKIE = "bronze_session"
COOKIE_PATH = "/ui"
COOKIE_MAX_AGE = 12 * 3600
"""Seconds a console sign-in lasts (the token itself may live longer)."""


class CsrfRefused(ApiError):
    """A state-changing console request without this session's CSRF token, or from another
    site's page."""

    status, code, template = 403, "csrf", "{message}"


@dataclass(frozen=True)
class UiSession:
    """A signed-in console user: the token (sent to the API in-process, never to the browser),
    who it is, and this session's CSRF token."""

    token: str
    principal: Principal
    csrf: str

    @property
    def can_operate(self) -> bool:
        return self.principal.can(Role.OPERATOR)


def csrf_for(key: bytes, token: str) -> str:
    return hmac.new(key, b"csrf:" + hash_token(token).encode(), hashlib.sha256).hexdigest()


async def principal_for(ctx: Context, token: str) -> Principal | None:
    """The token's principal through the same cache as the API (a revoked token is refused at
    once on every replica)."""
    gens = await ctx.db.generations_async()
    key = hash_token(token)
    principal: Principal | None = ctx.cache.principal(key, gens.tokens)
    if principal is None:

        def load() -> Principal | None:
            with ctx.db.read() as s:
                return authenticate(s, token)

        principal = await run_in_threadpool(load)
        if principal is not None:
            ctx.cache.put_principal(key, gens.tokens, principal)
    return principal


async def current(request: Request) -> UiSession | None:
    """The signed-in user of this request, or None (no cookie, or its token is no longer good)."""
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    principal = await principal_for(request.app.state.ctx, token)
    if principal is None:
        return None
    return UiSession(token, principal, csrf_for(request.app.state.ui_csrf_key, token))


def same_origin(request: Request) -> bool:
    """``Origin`` (sent by browsers on POST) names this server, or is absent (older clients;
    the CSRF token still has to match)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


def check_mutation(request: Request, session: UiSession, given: str | None) -> None:
    """CSRF first (a forged request learns nothing about roles), then the role."""
    if (
        not given
        or not hmac.compare_digest(given.encode(), session.csrf.encode())
        or not same_origin(request)
    ):
        raise CsrfRefused(message="missing or wrong CSRF token; reload the page and try again")
    if not session.can_operate:
        raise Forbidden(role=session.principal.role.value, action="change machines")
