"""Fixtures for the agent suite: ``lab``, an agent API with sandbox machines
(tests/support/agentlab.py), torn down after each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.agents import MemoryAgentStore
from tests.support.agentlab import Lab, running_lab


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with running_lab(tmp_path, MemoryAgentStore()) as lab:
        yield lab
