"""Shared fixtures. Peers live in tests/peers/; each area has its own folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.apiserver import RunningServer, run_server
from tests.peers.database import fresh_database


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    with fresh_database("sqlite", tmp_path) as url:
        yield url


@pytest.fixture
def api(tmp_path: Path, db_url: str) -> Iterator[RunningServer]:
    """A real uvicorn server on SQLite and on PostgreSQL."""
    with run_server(tmp_path / "data", db_url) as srv:
        yield srv


@pytest.fixture
def api_sqlite(tmp_path: Path, sqlite_url: str) -> Iterator[RunningServer]:
    with run_server(tmp_path / "data", sqlite_url) as srv:
        yield srv
