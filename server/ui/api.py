"""The console reads and changes the fleet through the REST API itself, in-process.

Each call goes through the same app (routing, validation, role checks, read cache, ETags,
errors) with the signed-in user's token as the bearer token, over httpx's ASGI transport: no
socket, no second copy of the API's rules. A reader's console cannot do more than a reader's
``curl``. The request id of the page's request is passed on, so events written by a mutation
carry it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI

from server.logs import REQUEST_ID


@dataclass(frozen=True)
class ApiAnswer:
    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error(self) -> str:
        """The API's error message (``{"error": {"message"}}``), for showing inline."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return str(self.body["error"].get("message", "error"))
        return f"HTTP {self.status}"


async def call(
    app: FastAPI,
    token: str,
    method: str,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    json: Any = None,
) -> ApiAnswer:
    headers = {"Authorization": f"Bearer {token}"}
    rid = REQUEST_ID.get()
    if rid:
        headers["X-Request-ID"] = rid
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://console.internal") as c:
        r = await c.request(
            method,
            path,
            params={k: v for k, v in (params or {}).items() if v not in (None, "")},
            json=json,
            headers=headers,
        )
    try:
        body = r.json()
    except ValueError:
        body = None
    return ApiAnswer(r.status_code, body)
