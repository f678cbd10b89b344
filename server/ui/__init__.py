"""The operators' console: ``/ui/`` pages served by ``bronze serve`` (``docs/console.md``)."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from server.ui import activity, routes  # noqa: F401 - their routes register on the router
from server.ui.render import HERE, SECURITY_HEADERS, SignedOut, router


def mount_ui(app: FastAPI, csrf_key: bytes) -> None:
    """Pages, their static files (``/ui/static``: the only scripts a page may load) and the
    redirect of signed-out users to the sign-in form."""
    app.state.ui_csrf_key = csrf_key

    async def signed_out(request: Request, exc: Exception) -> Response:
        if request.query_params.get("part") or request.method != "GET":
            return Response("signed out", status_code=401, headers=SECURITY_HEADERS)
        return RedirectResponse("/ui/login", status_code=303, headers=SECURITY_HEADERS)

    async def ui_root(request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=308)

    app.add_exception_handler(SignedOut, signed_out)
    app.add_api_route("/ui", ui_root, methods=["GET"], include_in_schema=False)
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")
