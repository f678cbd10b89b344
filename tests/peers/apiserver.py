"""A real bronze API server (uvicorn in a thread, 127.0.0.1, free port) for end-to-end tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from pxe import PxeSettings
from server.app import create_app
from server.settings import ServerSettings
from tests.support.ports import free_port


@dataclass
class RunningServer:
    url: str
    admin_token: str
    settings: ServerSettings
    app: Any

    def client(self, token: str | None = None) -> httpx.Client:
        tok = self.admin_token if token is None else token
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@contextmanager
def run_server(
    data_dir: Path, database_url: str, *, pxe_settings: PxeSettings | None = None, **overrides: Any
) -> Iterator[RunningServer]:
    port = free_port()
    # Power sync stays off unless a test turns it on: it would poll every stored BMC address.
    overrides.setdefault("power_sync_enabled", False)
    # So does the agent API: parallel tests would fight over its fixed ports.
    overrides.setdefault("agent_api_enabled", False)
    settings = ServerSettings(
        data_dir=data_dir, database_url=database_url, api_port=port, **overrides
    )
    app = create_app(settings, pxe_settings=pxe_settings or PxeSettings(enabled=False))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    token = (
        (data_dir / "admin.token").read_text().strip()
        if settings.admin_token is None
        else settings.admin_token.get_secret_value()
    )
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", token, settings, app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        app.state.ctx.db.dispose()
