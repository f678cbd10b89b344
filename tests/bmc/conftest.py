"""Fixtures: real BMC peers (see tests/peers/bmc_peers.py) and a fast-policy controller."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bmc import BmcController, BmcEndpoint, DriverKind, DriverTimeouts, PowerPolicy
from bmc.actions import default_driver_factory
from tests.peers import bmc_peers as peers

PEERS = ("sushy", "sushy-tls", "ipmi_sim", "pyghmi")
PASSWORD = "pa55-Word!"  # noqa: S105 - lab peers only

FAST = PowerPolicy(
    max_attempts=3,
    backoff_initial=0.1,
    backoff_max=0.5,
    deadline=30,
    read_deadline=10,
    settle_timeout=15,
    poll_interval=0.2,
    min_interval=0.02,
    max_concurrency=8,
)


def start_peer(name: str, workdir: Path, password: str = PASSWORD) -> peers.Peer:
    if name == "sushy":
        return peers.start_sushy(workdir)
    if name == "sushy-tls":
        return peers.start_sushy(workdir, tls=True, auth=("admin", password))
    if name == "ipmi_sim":
        return peers.start_ipmi_sim(workdir, password=password)
    if name == "pyghmi":
        return peers.start_pyghmi(workdir, password=password)
    raise ValueError(name)


def endpoint_for(peer: peers.Peer, password: str | None = None, **kw: object) -> BmcEndpoint:
    kind = DriverKind.redfish if peer.kind == "redfish" else DriverKind.ipmi
    args: dict[str, object] = dict(
        driver=kind,
        address=peer.address,
        port=peer.port,
        username=peer.username,
        password=peer.password if password is None else password,
        scheme=peer.scheme,
        ca_bundle=peer.ca_pem,
    )
    args.update(kw)
    return BmcEndpoint(**args)  # type: ignore[arg-type]


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
