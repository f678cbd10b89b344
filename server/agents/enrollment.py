"""Enrollment: a one-time bootstrap token and a CSR become the machine's client certificate
(``Enroll`` on the enrollment port, the only RPC a machine calls without one). Moved out of
``service`` (the two gRPC servers and the session RPC)."""

from __future__ import annotations

import datetime as dt
import logging
import time

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from google.protobuf import json_format

from agent.gen import agent_pb2 as pb
from agent.gen import agent_pb2_grpc as pb_grpc
from server.agents.pki import FleetCA, IssuedCert, PkiError
from server.agents.store import AgentStore, IssuedCertificate, SpentToken
from server.agents.tokens import (
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

PENDING_MESSAGE = "pending acceptance"
REFUSAL_EVENT_INTERVAL = 60.0
# An enrollment with less than this left of its caller's deadline keeps its token (Enroll).
ENROLL_MARGIN_SECONDS = 2.0
"""Seconds between two ``agent.enroll.refused`` events for one machine and reason."""


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
