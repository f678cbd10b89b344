"""BMC helpers shared by the bmc suite and the server's power tests: start a real peer by name,
describe it as a ``bmc.BmcEndpoint`` or as the REST API's ``bmc`` body, and fast policies
(short backoff and settle polling) so real peers answer within seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from bmc import BmcEndpoint, DriverKind, PowerPolicy
from tests.peers import bmc_peers as peers
from tests.support.wait import eventually

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

# The same idea as server settings overrides for ``run_server(...)``; loopback BMCs allowed.
FAST_SERVER: dict[str, Any] = dict(
    bmc_networks=["127.0.0.0/8"],
    bmc_ports=["1-65535"],  # the peers listen on free (ephemeral) ports
    bmc_settle_timeout=25.0,
    bmc_poll_interval=0.2,
    bmc_min_interval=0.02,
)


def start_peer(name: str, workdir: Path, password: str = PASSWORD) -> peers.Peer:
    """Start the real peer ``name`` (one of :data:`PEERS`) in ``workdir``."""
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


def bmc_body(peer: peers.Peer, password: str | None = None) -> dict[str, Any]:
    """The REST API's ``bmc`` object for ``peer``."""
    return {
        "driver": "redfish" if peer.kind == "redfish" else "ipmi",
        "address": f"{peer.address}:{peer.port}",
        "scheme": peer.scheme,
        "username": peer.username,
        "password": peer.password if password is None else password,
        "ca_bundle": peer.ca_pem,
    }


def add_machine(
    c: httpx.Client, name: str, mac: str, peer: peers.Peer, **kw: Any
) -> dict[str, Any]:
    """Register machine ``name`` with one NIC and ``peer`` as its BMC (201 asserted)."""
    r = c.post(
        "/api/v1/machines",
        json={
            "name": name,
            "nics": [{"mac": mac}],
            "bmc": bmc_body(peer, **kw),
            "labels": {"lab": "power"},
        },
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def wait_op(c: httpx.Client, op: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    """Poll operation ``op`` until it is neither queued nor running; return its last state."""
    if op["status"] not in ("queued", "running"):
        return op

    def finished() -> dict[str, Any] | None:
        doc = dict(c.get(f"/api/v1/operations/{op['id']}").json())
        return doc if doc["status"] not in ("queued", "running") else None

    return eventually(finished, timeout, interval=0.2)
