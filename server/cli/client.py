"""A small REST client for the ``bronze`` CLI (and scripts): URL and token resolution, one
error type.

Resolution order for the URL and token: command-line flags, then ``BRONZE_URL`` / ``BRONZE_TOKEN``
(or ``BRONZE_TOKEN_FILE``), then the config file (``BRONZE_CONFIG`` or
``~/.config/bronze/config.toml`` with ``url = "..."`` and ``token_file = "..."`` or
``token = "..."``),
then the local server's ``<data_dir>/admin.token`` when it is readable. Tokens are never taken
from argv: the flag is ``--token-file``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from server.settings import default_data_dir

DEFAULT_URL = "http://127.0.0.1:8080"


class ClientError(Exception):
    """A one-line, user-facing error."""


def _config_file() -> dict[str, Any]:
    path = Path(
        os.environ.get("BRONZE_CONFIG") or Path.home() / ".config" / "bronze" / "config.toml"
    )
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ClientError(f"cannot read config file {path}: {exc}") from None


def _read_token_file(path: str | Path) -> str:
    try:
        return Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise ClientError(f"cannot read token file {path}: {exc.strerror}") from None


def resolve(url: str | None, token_file: str | None) -> tuple[str, str | None]:
    cfg = _config_file()
    url = url or os.environ.get("BRONZE_URL") or cfg.get("url") or DEFAULT_URL
    token: str | None = None
    if token_file:
        token = _read_token_file(token_file)
    elif os.environ.get("BRONZE_TOKEN"):
        token = os.environ["BRONZE_TOKEN"].strip()
    elif os.environ.get("BRONZE_TOKEN_FILE"):
        token = _read_token_file(os.environ["BRONZE_TOKEN_FILE"])
    elif cfg.get("token_file"):
        token = _read_token_file(cfg["token_file"])
    elif cfg.get("token"):
        token = str(cfg["token"]).strip()
    else:
        data_dir = Path(os.environ.get("BRONZE_DATA_DIR") or default_data_dir())
        local = data_dir / "admin.token"
        if os.access(local, os.R_OK):
            token = _read_token_file(local)
    return url.rstrip("/"), token


def _error_line(resp: httpx.Response) -> str:
    try:
        err = resp.json()["error"]
        return f"{resp.status_code} {err['code']}: {err['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{resp.status_code}: {resp.text[:200]}"


@dataclass
class Client:
    url: str
    token: str | None
    timeout: float = 30.0

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> Any:
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            resp = httpx.request(
                method, self.url + path, headers=headers, timeout=self.timeout, **kwargs
            )
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach {self.url}: {exc.__class__.__name__}: {exc}") from None
        if resp.status_code >= 400:
            raise ClientError(_error_line(resp))
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    def stream_lines(self, path: str, params: dict[str, Any]) -> Iterator[bytes]:
        """GET a streaming response (NDJSON) and yield its lines as they arrive; no read timeout
        (a followed log may stay quiet for long)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        timeout = httpx.Timeout(self.timeout, read=None)
        try:
            with httpx.stream(
                "GET", self.url + path, params=params, headers=headers, timeout=timeout
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise ClientError(_error_line(resp))
                for line in resp.iter_lines():
                    if line:
                        yield line.encode()
        except httpx.HTTPError as exc:
            raise ClientError(f"{self.url}: {exc.__class__.__name__}: {exc}") from None

    def paginate(
        self, path: str, params: dict[str, Any], limit: int | None
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        params = {k: v for k, v in params.items() if v is not None}
        while True:
            page = self.request("GET", path, params=params)
            items.extend(page["items"])
            if not page.get("next_cursor") or (limit is not None and len(items) >= limit):
                return items[:limit] if limit is not None else items
            params["cursor"] = page["next_cursor"]
