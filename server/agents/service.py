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
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from google.protobuf import json_format

from agent.gen import agent_pb2 as pb
from agent.gen import agent_pb2_grpc as pb_grpc
from server.agents.hub import SessionHub
from server.agents.pki import FleetCA, IssuedCert, PkiError
from server.agents.pki_files import ExpiryWarning, expiring, load_or_issue_server_cert
from server.agents.store import AgentStore, IssuedCertificate, SpentToken
from server.agents.tokens import (
    DEFAULT_ENROLL_GRACE,
    DENIED_MESSAGE,
    BootstrapTokens,
    EnrollmentDenied,
    TokenGrant,
    key_fingerprint,
    peer_ip,
)
from server.agents.trouble import (
    MAX_PROBLEM_CHARS,
    ReportLimiter,
    ReportRejected,
    describe,
    diagnose,
    verify_report,
)
from server.metrics import ENROLLMENTS
from server.types import EventKind

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


PENDING_MESSAGE = "pending acceptance"
REFUSAL_EVENT_INTERVAL = 60.0
# An enrollment with less than this left of its caller's deadline keeps its token (Enroll).
ENROLL_MARGIN_SECONDS = 2.0
"""Seconds between two ``agent.enroll.refused`` events for one machine and reason."""


def peer_serial(context: grpc.aio.ServicerContext) -> int | None:
    """The serial of the verified client certificate (revocation is by serial)."""
    values = context.auth_context().get("x509_pem_cert") or []
    if len(values) != 1:
        return None
    try:
        return x509.load_pem_x509_certificate(values[0]).serial_number
    except ValueError:
        return None


class EnrollmentService(pb_grpc.EnrollmentServicer):
    """``Enroll`` and ``ReportTrouble``: the two calls a machine may make without a certificate.

    ``Enroll`` verifies the token first (same work on every path, ``server.agents.tokens``).
    A machine still ``discovered`` gets no certificate: its inventory is recorded, the token is
    kept, and the answer is ``FAILED_PRECONDITION`` "pending acceptance" (the agent retries).
    """

    def __init__(self, tokens: BootstrapTokens, ca: FleetCA, store: AgentStore) -> None:
        self._tokens = tokens
        self._ca = ca
        self._store = store
        self._pending_seen: set[tuple[str, str]] = set()
        self._refusals: dict[tuple[str, str], float] = {}
        self._reports = ReportLimiter()

    async def Enroll(  # noqa: N802 - gRPC method name
        self, request: pb.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> pb.EnrollResponse:
        try:
            csr = x509.load_pem_x509_csr(request.csr_pem.encode())
            key_id = key_fingerprint(csr)
        except (ValueError, UnsupportedAlgorithm):
            ENROLLMENTS.labels("refused", "malformed_csr").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed CSR")
        try:
            grant = await self._tokens.verify(
                request.machine_id,
                request.bootstrap_token,
                peer=peer_ip(context.peer()),
                key_sha256=key_id,
            )
            if grant.token.spent is not None:
                return await self._answer_again(grant, grant.token.spent, csr, context.peer())
            issued = await self._issue(grant, request, key_id, context)
        except EnrollmentDenied as exc:
            log.warning("enrollment denied peer=%s", context.peer())
            await self._refused(request.machine_id, exc.reason, context.peer())
            ENROLLMENTS.labels("refused", "bad_token").inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED_MESSAGE)
        await self._store.record_certificate(
            request.machine_id, IssuedCertificate(issued.serial, issued.not_after)
        )
        log.info("machine enrolled machine=%s peer=%s", request.machine_id, context.peer())
        ENROLLMENTS.labels("enrolled", "").inc()
        return self._answer(issued.cert_pem.decode(), issued.not_after)

    async def _issue(
        self,
        grant: TokenGrant,
        request: pb.EnrollRequest,
        key_id: str,
        context: grpc.aio.ServicerContext,
    ) -> IssuedCert:
        """Sign the CSR and spend the token on it (or abort: pending, refused CSR, late)."""
        if not grant.machine.accepted:
            await self._pending(request, grant.token.boot_ref, context.peer())
            ENROLLMENTS.labels("refused", "not_accepted").inc()
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, PENDING_MESSAGE)
        # The token is one-time: spend it only on a certificate that exists and on a caller
        # still there to receive it. Signing first, so a CSR the CA refuses burns nothing;
        # and a caller whose deadline has (nearly) run out keeps its token, because under
        # load its client gives up before our answer arrives and its retry would otherwise
        # be refused for good. An answer lost after this point is answered again to a retry
        # with the same key (_answer_again).
        try:
            issued = self._ca.sign_client_csr(request.csr_pem.encode(), request.machine_id)
        except PkiError as exc:
            ENROLLMENTS.labels("refused", "csr_refused").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        left = context.time_remaining()
        if left is not None and left < ENROLL_MARGIN_SECONDS:
            log.warning(
                "enrollment late, token kept machine=%s left=%.2fs", grant.token.machine_id, left
            )
            ENROLLMENTS.labels("refused", "late").inc()
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "enrollment too late: retry")
        await self._tokens.consume(grant, key_id, issued.cert_pem.decode())
        return issued

    async def _answer_again(
        self,
        grant: TokenGrant,
        spent: SpentToken,
        csr: x509.CertificateSigningRequest,
        peer: str,
    ) -> pb.EnrollResponse:
        """A retry of the enrollment that spent the token (same token, same key, within the
        grace window): its first answer was lost. The same certificate again, as long as it is
        still the machine's accepted one (a revoked or replaced identity is not handed out) and
        the caller proves it holds the key (the CSR's signature). A retry that arrives between
        the first call's spending and its recording of the certificate is refused; the agent's
        next retry gets the answer."""
        mid = grant.token.machine_id
        cert = x509.load_pem_x509_certificate(spent.cert_pem.encode())
        if not csr.is_signature_valid:
            raise EnrollmentDenied("retry with a CSR whose signature does not verify")
        accepted = (await self._store.accepted_certificates([mid])).get(mid, set())
        if not grant.machine.accepted or cert.serial_number not in accepted:
            raise EnrollmentDenied("the certificate this token was spent on is revoked or replaced")
        log.info(
            "enrollment answered again machine=%s peer=%s serial=%x", mid, peer, cert.serial_number
        )
        await self._store.record_event(
            mid,
            EventKind.AGENT_ENROLL_REPEATED,
            "agent retried an enrollment whose answer it never got; same certificate answered",
            {"serial": str(cert.serial_number), "spent_at": spent.at.isoformat(), "peer": peer},
        )
        ENROLLMENTS.labels("repeated", "").inc()
        return self._answer(spent.cert_pem, cert.not_valid_after_utc)

    def _answer(self, cert_pem: str, not_after: dt.datetime) -> pb.EnrollResponse:
        return pb.EnrollResponse(
            cert_pem=cert_pem,
            ca_pem=self._ca.cert_pem.decode(),
            not_after=int(not_after.timestamp()),
        )

    async def _refused(self, machine_id: str, reason: str, peer: str) -> None:
        """An event for the operator (provisioning reads it to say why a machine never
        enrolled): at most one per machine and reason a minute, and only for a machine that
        exists (the id is the caller's claim, unproven)."""
        now = time.monotonic()
        key = (machine_id, reason)
        if now - self._refusals.get(key, -REFUSAL_EVENT_INTERVAL) < REFUSAL_EVENT_INTERVAL:
            return
        if len(self._refusals) > 10_000:
            self._refusals.clear()
        self._refusals[key] = now
        await self._store.record_event(
            machine_id,
            EventKind.AGENT_ENROLL_REFUSED,
            f"enrollment refused: {reason}",
            {"reason": reason, "peer": peer},
        )

    async def _pending(self, request: pb.EnrollRequest, boot_ref: str, peer: str) -> None:
        """A discovered machine proved its token: keep what it reports, confer nothing."""
        mid = request.machine_id
        if request.HasField("inventory"):
            inv = json_format.MessageToDict(request.inventory, preserving_proto_field_name=True)
            await self._store.record_discovered_inventory(mid, inv)
        if (mid, boot_ref) not in self._pending_seen:  # one event per boot, not per retry
            if len(self._pending_seen) > 10_000:
                self._pending_seen.clear()
            self._pending_seen.add((mid, boot_ref))
            await self._store.record_event(
                mid,
                EventKind.AGENT_ENROLL_PENDING,
                "agent waiting for the machine to be accepted; no certificate issued",
                {"boot_ref": boot_ref, "peer": peer},
            )
        log.info("enrollment pending acceptance machine=%s peer=%s", mid, peer)

    async def ReportTrouble(  # noqa: N802 - gRPC method name
        self, request: pb.TroubleReport, context: grpc.aio.ServicerContext
    ) -> pb.TroubleAck:
        problem = request.problem[:MAX_PROBLEM_CHARS]
        try:
            rep = verify_report(
                self._ca,
                request.machine_id,
                request.cert_pem.encode(),
                request.agent_time_ms,
                request.problem,
                request.signature,
            )
        except ReportRejected as exc:
            log.warning("trouble report rejected peer=%s reason=%s", context.peer(), exc)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "report rejected")
        now = self._ca.now()
        nb, na = rep.cert.not_valid_before_utc, rep.cert.not_valid_after_utc
        findings = diagnose(now, rep.agent_now, nb, na)
        ack = pb.TroubleAck(server_time_ms=int(now.timestamp() * 1000), findings=findings)
        if not findings:
            log.info(
                "agent trouble machine=%s peer=%s problem=%r",
                rep.machine_id,
                context.peer(),
                problem,
            )
            return ack
        text = describe(findings, rep.agent_now - now, nb, na)
        log.warning(
            "agent trouble machine=%s peer=%s serial=%x %s (agent says: %s)",
            rep.machine_id,
            context.peer(),
            rep.cert.serial_number,
            text,
            problem,
        )
        if self._reports.allow(rep.machine_id, findings, now):
            data = {
                "findings": [str(f) for f in findings],
                "skew_seconds": round((rep.agent_now - now).total_seconds(), 3),
                "cert_not_before": nb.isoformat(),
                "cert_not_after": na.isoformat(),
                "peer": context.peer(),
                "problem": problem,
            }
            await self._store.record_event(rep.machine_id, EventKind.AGENT_TROUBLE, text, data)
        return ack


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
