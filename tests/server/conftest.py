"""Fixtures shared by the server tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.apiserver import RunningServer, run_server
from tests.support.bmc import FAST_SERVER as FAST


@pytest.fixture
def lab(tmp_path: Path, sqlite_url: str) -> Iterator[RunningServer]:
    with run_server(tmp_path / "data", sqlite_url, **FAST) as srv:
        yield srv
