"""Shared fixtures. Real peers live in tests/peers/, helpers in tests/support/; each area has its
own folder. Test modules import from those two packages only, never from each other."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.inventory import migrate
from server.inventory.db import Database
from tests.peers.apiserver import RunningServer, run_server
from tests.peers.database import fresh_database
from tests.support.procs import reset_inherited_signals, stop_process


def pytest_configure(config: pytest.Config) -> None:
    # Children must start with default signal dispositions however the suite was launched
    # (a backgrounded shell or a CI runner may hand us SIGINT ignored): tests/support/procs.py.
    reset_inherited_signals()


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


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """A migrated database (SQLite and PostgreSQL) without a server."""
    migrate.upgrade(db_url)
    database = Database.connect(db_url)
    yield database
    database.dispose()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts (agents, ...): stopped with SIGTERM, then killed, at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        stop_process(p, grace=10)
