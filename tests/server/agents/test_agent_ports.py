"""A second server cannot share the agent ports (grpcio's default SO_REUSEPORT is off): the agent
plane of the one that came second fails, visibly, while its REST API serves."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from tests.peers.apiserver import run_server
from tests.peers.database import fresh_database
from tests.support.ports import free_port


def test_second_server_on_the_same_agent_ports_fails_that_plane(tmp_path: Path) -> None:
    enroll, session = free_port(), free_port()
    ports = dict(agent_api_enabled=True, agent_enroll_port=enroll, agent_session_port=session)
    with (
        fresh_database("sqlite", tmp_path / "a") as url_a,
        fresh_database("sqlite", tmp_path / "b") as url_b,
        run_server(tmp_path / "a" / "data", url_a, **ports) as a,
        run_server(tmp_path / "b" / "data", url_b, **ports) as b,
    ):
        assert httpx.get(f"{a.url}/healthz").json()["components"]["agent_api"] == "ok"
        health = httpx.get(f"{b.url}/healthz").json()
        assert health["status"] == "degraded"
        assert health["components"]["agent_api"].startswith("failed:")
        assert (
            "in use" in health["components"]["agent_api"]
            or "bind" in health["components"]["agent_api"].lower()
        )


def test_a_port_held_by_another_program_fails_that_plane(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        with (
            fresh_database("sqlite", tmp_path) as url,
            run_server(
                tmp_path / "data",
                url,
                agent_api_enabled=True,
                agent_enroll_port=taken,
                agent_session_port=free_port(),
            ) as srv,
        ):
            comp = httpx.get(f"{srv.url}/healthz").json()["components"]["agent_api"]
            assert comp.startswith("failed:"), comp
