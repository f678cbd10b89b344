"""The agent API's two gRPC servers: enrollment (server-auth TLS) and sessions (mutual TLS).

They are two ``grpc.aio`` servers on two ports, not two services on one: gRPC credentials are per
port but services are per server, so one server would also expose ``Session`` on the port that
does not ask for a client certificate. With two servers the session port *requires* a client
certificate signed by the fleet CA (``require_client_auth=True``: grpcio does not require one
otherwise) and the enrollment port serves nothing but ``Enroll``. The session handler still
refuses a peer without a verified common name, in case it is ever mounted elsewhere.

Identity: ``context.auth_context()['x509_common_name']`` of the verified client certificate.
Nothing the agent *says* (request fields, metadata) names the machine.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509

from agent.gen import agent_pb2 as pb
from agent.gen import agent_pb2_grpc as pb_grpc
from server.agents.enrollment import EnrollmentService
from server.agents.hub import SessionHub
from server.agents.pki import FleetCA
from server.agents.pki_files import ExpiryWarning, expiring, load_or_issue_server_cert
from server.agents.store import AgentStore
from server.agents.tokens import (
    DEFAULT_ENROLL_GRACE,
    BootstrapTokens,
)

log = logging.getLogger(__name__)

# Keepalives: find dead peers (a machine that lost power sends no FIN) within about a minute.
SERVER_OPTIONS: list[tuple[str, int]] = [
    # NOTE: grpcio binds with SO_REUSEPORT unless told not to: a second server on the same port
    # would silently share the agents' connections (with another CA). A taken port must fail.
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]
SESSION_OPTIONS: list[tuple[str, int]] = [
    *SERVER_OPTIONS,
    # No bandwidth-delay-product probing on the session port: a probe is a PING round trip that
    # an idle connection starts on the first DATA after a pause, i.e. at every heartbeat; its only
    # use is growing the receive window for bulk transfers, which sessions do not carry.
    ("grpc.http2.bdp_probe", 0),
]


def peer_common_name(context: grpc.aio.ServicerContext) -> str | None:
    values = context.auth_context().get("x509_common_name") or []
    if len(values) != 1:
        return None
    return values[0].decode()


def peer_serial(context: grpc.aio.ServicerContext) -> int | None:
    """The serial of the verified client certificate (revocation is by serial)."""
    values = context.auth_context().get("x509_pem_cert") or []
    if len(values) != 1:
        return None
    try:
        return x509.load_pem_x509_certificate(values[0]).serial_number
    except ValueError:
        return None


class SessionService(pb_grpc.AgentSessionServicer):
    def __init__(self, hub: SessionHub) -> None:
        self._hub = hub

    async def Session(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[pb.AgentMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ServerMessage]:
        machine_id = peer_common_name(context)
        if not machine_id:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "client certificate required")
            return
        serial = peer_serial(context)
        if serial is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "client certificate required")
            return
        async for msg in self._hub.run_session(
            machine_id, context.peer(), request_iterator, context, cert_serial=serial
        ):
            yield msg


@dataclass
class AgentApiServer:
    """Both gRPC servers plus the hub. ``enroll_port``/``session_port`` 0 pick free ports; the
    bound ports are in the same attributes after :meth:`start`."""

    store: AgentStore
    ca: FleetCA
    host: str = "127.0.0.1"
    enroll_port: int = 0
    session_port: int = 0
    server_names: Sequence[str] = ("127.0.0.1",)
    heartbeat_interval: float = 30.0
    token_ttl: dt.timedelta = dt.timedelta(minutes=30)
    enroll_grace: dt.timedelta = DEFAULT_ENROLL_GRACE
    """How long a retry of an enrollment whose answer was lost is answered again."""
    pki_dir: Path | None = None
    """Where the server certificate is kept across restarts (``server.agents.pki_files``);
    ``None``: a fresh one at every start (tests)."""

    def __post_init__(self) -> None:
        self.hub = SessionHub(self.store, self.ca, heartbeat_interval=self.heartbeat_interval)
        self.tokens = BootstrapTokens(self.store, ttl=self.token_ttl, grace=self.enroll_grace)
        self._servers: list[grpc.aio.Server] = []

    async def start(self) -> None:
        if self.pki_dir is not None:
            pair = load_or_issue_server_cert(self.ca, self.pki_dir, list(self.server_names))
        else:
            pair = self.ca.issue_server_cert(list(self.server_names))
        self.server_cert = x509.load_pem_x509_certificate(pair.cert_pem)
        chain = [(pair.key_pem, pair.cert_pem)]

        enroll = grpc.aio.server(options=SERVER_OPTIONS)
        pb_grpc.add_EnrollmentServicer_to_server(
            EnrollmentService(self.tokens, self.ca, self.store), enroll
        )
        self.enroll_port = _bound(
            enroll.add_secure_port(
                f"{self.host}:{self.enroll_port}", grpc.ssl_server_credentials(chain)
            ),
            self.host,
            self.enroll_port,
        )

        session = grpc.aio.server(options=SESSION_OPTIONS)
        pb_grpc.add_AgentSessionServicer_to_server(SessionService(self.hub), session)
        self.session_port = _bound(
            session.add_secure_port(
                f"{self.host}:{self.session_port}",
                grpc.ssl_server_credentials(
                    chain, root_certificates=self.ca.cert_pem, require_client_auth=True
                ),
            ),
            self.host,
            self.session_port,
        )
        await enroll.start()
        await session.start()
        self._servers = [enroll, session]
        self.hub.start()
        log.info(
            "agent api listening host=%s enroll_port=%d session_port=%d",
            self.host,
            self.enroll_port,
            self.session_port,
        )

    def expiring(self) -> list[ExpiryWarning]:
        """The signing CA and the server certificate, when they expire within 30 days."""
        return expiring(self.ca.cert, getattr(self, "server_cert", None), self.ca.now())

    async def stop(self, grace: float | None = 1.0) -> None:
        await self.hub.stop()
        for s in self._servers:
            await s.stop(grace)
        self._servers = []

    async def wait_for_termination(self) -> None:
        for s in self._servers:
            await s.wait_for_termination()


async def start_agent_api(
    store: AgentStore,
    *,
    ca_dir: Path,
    host: str = "127.0.0.1",
    enroll_port: int = 7443,
    session_port: int = 7444,
    server_names: Sequence[str] = ("127.0.0.1",),
    heartbeat_interval: float = 30.0,
    enroll_grace: dt.timedelta = DEFAULT_ENROLL_GRACE,
) -> AgentApiServer:
    """Composition-root helper for ``bronze serve``: load or create the fleet CA in ``ca_dir``,
    start both servers and return them (``.hub`` for the REST layer, ``.tokens`` for the boot
    plane). Call ``await server.stop()`` on shutdown."""
    ca = FleetCA.load_or_create(ca_dir)
    server = AgentApiServer(
        store,
        ca,
        host=host,
        enroll_port=enroll_port,
        session_port=session_port,
        server_names=server_names,
        heartbeat_interval=heartbeat_interval,
        enroll_grace=enroll_grace,
        pki_dir=ca_dir,
    )
    await server.start()
    return server


def _bound(port: int, host: str, asked: int) -> int:
    """grpcio answers a port it could not bind with 0 (older versions) or raises RuntimeError."""
    if port == 0:
        raise OSError(f"cannot listen on {host}:{asked}: address already in use")
    return port
