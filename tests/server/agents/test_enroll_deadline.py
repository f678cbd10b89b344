"""A one-time enrollment token is spent only on a certificate the caller can still receive: a
caller whose deadline has (nearly) run out, or whose CSR the CA refuses, keeps its token and
its retry enrolls. Real uvicorn + agent API and real gRPC ``Enroll`` calls with real CSRs."""

from __future__ import annotations

from pathlib import Path

import grpc
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import CertificateSigningRequestBuilder, Name, NameAttribute
from cryptography.x509.oid import NameOID

from agent.gen import agent_pb2 as pb
from agent.gen import agent_pb2_grpc as pb_grpc
from agent.identity import new_key_and_csr
from server.agents.enrollment import ENROLL_MARGIN_SECONDS
from tests.server.agents.test_enrollment_wipe import _server, token


def _enroll(port: int, ca: bytes, machine_id: str, tok: str, csr: bytes, timeout: float) -> str:
    creds = grpc.ssl_channel_credentials(root_certificates=ca)
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        try:
            resp = pb_grpc.EnrollmentStub(ch).Enroll(
                pb.EnrollRequest(bootstrap_token=tok, machine_id=machine_id, csr_pem=csr.decode()),
                timeout=timeout,
            )
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
    assert "BEGIN CERTIFICATE" in resp.cert_pem
    return "OK"


def _weak_csr(machine_id: str) -> bytes:
    """A well-formed CSR the fleet CA refuses: a P-192 key ('CSR key too weak')."""
    key = ec.generate_private_key(ec.SECP192R1())
    csr = (
        CertificateSigningRequestBuilder()
        .subject_name(Name([NameAttribute(NameOID.COMMON_NAME, machine_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def test_late_or_refused_enrollment_keeps_the_token(tmp_path: Path, db_url: str) -> None:
    with _server(tmp_path, db_url) as srv:
        api = srv.app.state.agent_api
        port, ca = api.enroll_port, api.ca.cert_pem
        c = srv.client()
        r = c.post(
            "/api/v1/machines", json={"name": "late-1", "nics": [{"mac": "02:00:00:00:21:01"}]}
        )
        assert r.status_code == 201, r.text
        mid = r.json()["id"]
        tok = token(c, "late-1")

        # A caller with less than the margin left: refused without spending the token.
        late = _enroll(port, ca, mid, tok, new_key_and_csr(mid)[1], ENROLL_MARGIN_SECONDS / 4)
        assert late.startswith("DEADLINE_EXCEEDED"), late
        # A CSR the CA refuses: INVALID_ARGUMENT, token still unspent.
        weak = _enroll(port, ca, mid, tok, _weak_csr(mid), 10)
        assert weak == "INVALID_ARGUMENT: CSR key too weak", weak

        # The retry enrolls with the same token, and the token is spent by it.
        assert _enroll(port, ca, mid, tok, new_key_and_csr(mid)[1], 10) == "OK"
        again = _enroll(port, ca, mid, tok, new_key_and_csr(mid)[1], 10)
        assert again.startswith("UNAUTHENTICATED"), again
