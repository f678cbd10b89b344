"""Running the ``bronze`` console script against a test server, isolated from the caller's
environment (no inherited ``BRONZE_*``, no user config file)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.peers.apiserver import RunningServer
from tests.support.procs import BRONZE

__all__ = ["BRONZE", "cli_env", "run"]


def cli_env(api: RunningServer, tmp_path: Path, token: str | None = None) -> dict[str, str]:
    """An environment pointing the CLI at ``api`` with a token file in ``tmp_path``."""
    tok_file = tmp_path / "cli.token"
    tok_file.write_text(token or api.admin_token)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRONZE_")}
    env.update(
        {
            "BRONZE_URL": api.url,
            "BRONZE_TOKEN_FILE": str(tok_file),
            "BRONZE_CONFIG": str(tmp_path / "none.toml"),
            "COLUMNS": "200",
        }
    )
    return env


def run(
    api: RunningServer,
    tmp_path: Path,
    *args: str,
    token: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``bronze ARGS...`` against ``api``; output captured as text."""
    env = {**cli_env(api, tmp_path, token), **(extra_env or {})}
    return subprocess.run([BRONZE, *args], capture_output=True, text=True, env=env, timeout=60)
