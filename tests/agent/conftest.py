"""Fixtures for the agent suite: ``lab``, an agent API with sandbox machines
(tests/support/agentlab.py), torn down after each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.agents import AgentApiServer, MemoryAgentStore
from server.agents.pki import FleetCA
from tests.support.agentlab import Lab, LoopThread


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lt = LoopThread()
    store = MemoryAgentStore()
    ca = FleetCA.load_or_create(tmp_path / "ca")
    api = AgentApiServer(store, ca, heartbeat_interval=1.0)
    lt.run(api.start())
    lab = Lab(tmp_path, lt, store, ca, api)
    try:
        yield lab
    finally:
        for p in lab.procs:
            lab.stop_agent(p)
        lt.run(lab.api.stop(0))
        lt.close()
