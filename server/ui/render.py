"""What every console page shares: the template environment (autoescaping on), the security
headers, responses with ETags, the signed-in session, in-process API calls, live parts, form
parsing, and the API's refusals passed on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from server.errors import ApiError, Invalid
from server.ui.api import ApiAnswer, call
from server.ui.session import UiSession, current

HERE = Path(__file__).parent
router = APIRouter(prefix="/ui", include_in_schema=False)

env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters["pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, ensure_ascii=False)
env.filters["q"] = lambda v: quote(str(v), safe="")

POWER_ACTIONS = ("on", "off", "soft-off", "cycle", "reset")
BOOT_DEVICES = ("pxe", "disk", "bios", "cdrom")
PAGE_SIZES = (50, 100, 200, 500)

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer would make browsers send `Origin: null`
    "Cache-Control": "no-store",
}


class SignedOut(Exception):
    """No (valid) session: the page redirects to the sign-in form."""


def html(request: Request, template: str, status: int = 200, **values: Any) -> Response:
    body = env.get_template(template).render(request=request, **values)
    return respond(request, body, status)


def respond(request: Request, body: str, status: int = 200) -> Response:
    etag = '"' + hashlib.sha256(body.encode()).hexdigest()[:32] + '"'
    headers = dict(SECURITY_HEADERS) | {"ETag": etag}
    if status == 200 and request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return HTMLResponse(body, status_code=status, headers=headers)


def redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


async def signed_in(request: Request) -> UiSession:
    session = await current(request)
    if session is None:
        raise SignedOut()
    return session


async def api(request: Request, session: UiSession, method: str, path: str, **kw: Any) -> ApiAnswer:
    return await call(request.app, session.token, method, path, **kw)


def page_or_part(
    request: Request, session: UiSession, name: str | None, page: str, **values: Any
) -> Response:
    """The whole page, or only the live part ``name`` (``parts/<page>_<name>.html``)."""
    values |= {"session": session, "can_operate": session.can_operate}
    if name:
        if not name.isidentifier():
            raise Invalid(message="unknown part", details={"field": "part"})
        return html(request, f"parts/{page}_{name}.html", **values)
    return html(request, f"{page}.html", **values)


FORM_MAX = 64 << 10
"""Largest console form body (1,000 machine names fit easily)."""


class Form(dict[str, list[str]]):
    """An ``application/x-www-form-urlencoded`` body (the only kind the console's forms send;
    parsed here rather than with a multipart library)."""

    def one(self, name: str, limit: int = 256) -> str:
        values = self.get(name) or [""]
        return values[0][:limit]


async def read_form(request: Request) -> Form:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return Form()  # no fields: a mutation then fails its CSRF check (403), as any forgery
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_MAX:
            raise Invalid(message="form too large", details={"field": "body"})
    return Form(parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True))


class _Relayed(ApiError):
    """The API's own refusal of a console mutation, passed on with its status and message."""

    code, template = "refused", "{message}"


def as_error(r: ApiAnswer) -> ApiError:
    err = _Relayed(message=r.error)
    err.status = r.status  # type: ignore[misc]
    return err
