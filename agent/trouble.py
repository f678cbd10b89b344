"""The agent's side of trouble reports (``server.agents.trouble`` explains the mechanism).

When the agent holds a certificate but cannot hold a session, or its own clock says that
certificate is expired or not yet valid, it tells the server over the enrollment port (no client
certificate needed), signed with its key. The answer carries the server's clock; the agent keeps
the difference (:class:`ServerClock`) and judges certificate validity and renewal by it, because
the server (which checks the certificates) is the clock that matters.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.gen import agent_pb2 as pb
from agent.gen import agent_pb2_grpc as pb_grpc
from agent.identity import Credentials

log = logging.getLogger(__name__)

REPORT_INTERVAL = 30.0  # seconds between two reports (monotonic)


def report_payload(machine_id: str, agent_time_ms: int, problem: str) -> bytes:
    """Same bytes as ``server.agents.trouble.report_payload`` (the agent does not import the
    server)."""
    return b"\0".join(
        [b"bronze-trouble-v1", machine_id.encode(), str(agent_time_ms).encode(), problem.encode()]
    )


class ServerClock:
    """The agent's clock (plus a configured offset, for simulation) corrected by what the server
    last said its time was."""

    def __init__(self, offset: float = 0.0, wall: Callable[[], float] = time.time) -> None:
        self._offset = offset
        self._wall = wall
        self.correction = 0.0
        """Seconds to add to the local clock to get the server's (0 until a report is answered)."""

    def local(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._wall() + self._offset, dt.UTC)

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._wall() + self._offset + self.correction, dt.UTC)

    def learn(self, server_time_ms: int, local: dt.datetime) -> None:
        self.correction = server_time_ms / 1000 - local.timestamp()


class TroubleReporter:
    """Sends at most one report per :data:`REPORT_INTERVAL`."""

    def __init__(
        self,
        enroll: str,
        ca_pem: bytes | None,
        clock: ServerClock,
        options: Sequence[tuple[str, Any]],
    ) -> None:
        self._enroll = enroll
        self._ca_pem = ca_pem
        self._clock = clock
        self._options = list(options)
        self._last: float | None = None

    async def report(self, machine_id: str, creds: Credentials, problem: str) -> list[str]:
        """Report ``problem``; returns the server's findings ([] when not sent or it failed)."""
        mono = time.monotonic()
        if self._last is not None and mono - self._last < REPORT_INTERVAL:
            return []
        if not self._enroll:
            return []
        self._last = mono
        local = self._clock.local()
        at_ms = int(local.timestamp() * 1000)
        key = serialization.load_pem_private_key(creds.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            return []
        sig = key.sign(report_payload(machine_id, at_ms, problem), ec.ECDSA(hashes.SHA256()))
        req = pb.TroubleReport(
            machine_id=machine_id,
            cert_pem=creds.cert_pem.decode(),
            agent_time_ms=at_ms,
            problem=problem,
            signature=sig,
        )
        tls = grpc.ssl_channel_credentials(root_certificates=creds.ca_pem or self._ca_pem)
        try:
            async with grpc.aio.secure_channel(self._enroll, tls, options=self._options) as ch:
                ack = await pb_grpc.EnrollmentStub(ch).ReportTrouble(req, timeout=10)
        except grpc.aio.AioRpcError as exc:
            log.info("trouble report not delivered code=%s", exc.code().name)
            return []
        self._clock.learn(ack.server_time_ms, local)
        findings = list(ack.findings)
        log.warning(
            "trouble reported machine=%s problem=%r server_findings=%s clock_correction=%.1fs",
            machine_id,
            problem,
            ",".join(findings) or "none",
            self._clock.correction,
        )
        return findings
