"""``/docs``: the interactive OpenAPI page, served entirely from the package.

FastAPI's default page loads Swagger UI from a public CDN, so on an air-gapped management network
(where bare-metal controllers usually live) it is blank. The Swagger UI files come from the
``swagger-ui-bundle`` wheel and are served under ``/docs/static``; nothing leaves the network.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

STATIC = "/docs/static"


def mount_docs(app: FastAPI) -> None:
    """Serve ``/docs`` (create the app with ``docs_url=None``)."""
    app.mount(STATIC, StaticFiles(directory=swagger_ui_path), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="bronze API",
            swagger_js_url=f"{STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC}/favicon-32x32.png",
        )
