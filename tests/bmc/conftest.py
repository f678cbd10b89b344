"""Fixtures: real BMC peers (see tests/peers/bmc_peers.py, started by tests/support/bmc.py) and a
fast-policy controller."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bmc import BmcController, DriverTimeouts
from bmc.actions import default_driver_factory
from tests.peers import bmc_peers as peers
from tests.support.bmc import FAST, PEERS, start_peer


@pytest.fixture(params=PEERS)
def peer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[peers.Peer]:
    p = start_peer(request.param, tmp_path / request.param)
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def controller() -> Iterator[BmcController]:
    ctl = BmcController(default_driver_factory(DriverTimeouts(connect=1.0, read=5.0)), FAST)
    try:
        yield ctl
    finally:
        ctl.close()
