"""Certificate revocation over real gRPC with a real ``bronze-agent``: a certificate that is no
longer the machine's current one opens no session, and a live session of one is closed."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import pytest

from agent.gen import agent_pb2 as pb
from agent.gen import agent_pb2_grpc as pb_grpc
from agent.identity import new_key_and_csr
from server.agents import IssuedCertificate, MemoryAgentStore
from server.agents.liveness import Liveness
from server.agents.registry import AgentSession
from server.agents.store import certificate_accepted
from tests.support.agentlab import Lab, hello_message, session_call
from tests.support.wait import eventually

T = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("serial", "current", "previous", "want"),
    [
        (7, "7", None, True),
        (7, "8", "7", True),
        (8, "8", "7", True),
        (6, "8", "7", False),
        (7, None, None, False),
        (7, "70", None, False),
    ],
    ids=[
        "current",
        "renewed-from-still-accepted",
        "renewed",
        "older-than-both",
        "revoked",
        "no-prefix-match",
    ],
)
def test_certificate_accepted(serial: int, current: str | None, previous: str | None, want: bool):
    assert certificate_accepted(serial, current, previous) is want


def test_renewal_keeps_the_old_certificate_until_the_new_one_is_used() -> None:
    async def main() -> None:
        store = MemoryAgentStore()
        store.add_machine("m")
        await store.record_certificate("m", IssuedCertificate(1, T))
        await store.record_certificate("m", IssuedCertificate(2, T), renewal=True)
        assert await store.certificate_accepted("m", 1)  # NewCertificate may have been lost
        assert await store.certificate_accepted("m", 2)  # the agent now uses the new one ...
        assert not await store.certificate_accepted("m", 1)  # ... so the old one is done
        await store.record_certificate("m", IssuedCertificate(3, T))  # enrollment: only 3
        assert not await store.certificate_accepted("m", 2)
        assert await store.accepted_certificates(["m", "gone"]) == {"m": {3}}

    asyncio.run(main())


def _enroll(lab: Lab, machine_id: str, token: str) -> grpc.ChannelCredentials:
    """Enroll over the real Enroll RPC; session credentials for the certificate it returns."""
    key, csr = new_key_and_csr(machine_id)
    with grpc.secure_channel(lab.enroll, grpc.ssl_channel_credentials(lab.ca.cert_pem)) as ch:
        resp = pb_grpc.EnrollmentStub(ch).Enroll(
            pb.EnrollRequest(bootstrap_token=token, machine_id=machine_id, csr_pem=csr.decode()),
            timeout=10,
        )
    return grpc.ssl_channel_credentials(lab.ca.cert_pem, key, resp.cert_pem.encode())


def _agent_log(lab: Lab, machine_id: str) -> str:
    return (lab.tmp / machine_id / "agent.log").read_text()


def test_old_certificate_refused_after_reenrollment(lab: Lab) -> None:
    _root, _proc = lab.start_machine("m1")  # a real agent, enrolled and connected
    old = lab.api.hub.registry.get("m1")
    assert old is not None and old.cert_serial is not None
    # The machine is reprovisioned and enrolls again (a new token for its next boot).
    creds = _enroll(lab, "m1", lab.issue_token("m1", "boot-2"))
    # The old agent's live session is closed, and its reconnects are refused.
    eventually(lambda: "certificate revoked" in _agent_log(lab, "m1"), 30)
    assert lab.api.hub.registry.get("m1") is not old
    # The new certificate opens the session; the old agent's retries never displace it.
    hold = threading.Event()
    t = threading.Thread(target=session_call, args=(lab, creds, hello_message(), hold))
    t.start()
    try:
        eventually(lambda: lab.api.hub.is_connected("m1"))
        new = lab.api.hub.registry.get("m1")
        assert new is not None and new.cert_serial not in (None, old.cert_serial)
        refusals = _agent_log(lab, "m1").count("certificate revoked")
        eventually(lambda: _agent_log(lab, "m1").count("certificate revoked") > refusals, 30)
        assert lab.api.hub.registry.get("m1") is new
    finally:
        hold.set()
        t.join(10)


def test_revocation_by_another_replica_closes_the_live_session(lab: Lab) -> None:
    lab.start_machine("m1")
    lab.store.revoke("m1")  # what another replica's revoke leaves in the shared database
    eventually(lambda: "certificate revoked" in _agent_log(lab, "m1"), 30)
    assert not lab.api.hub.is_connected("m1")


@dataclass
class _Recording(MemoryAgentStore):
    """Records which machines each lookup of accepted certificates asked for."""

    asked: list[list[str]] = field(default_factory=list)

    async def accepted_certificates(self, machine_ids: Sequence[str]) -> dict[str, set[int]]:
        self.asked.append(list(machine_ids))
        return await super().accepted_certificates(machine_ids)


def test_sweep_looks_up_only_unchecked_sessions_while_nothing_is_revoked() -> None:
    async def main() -> None:
        store = _Recording()
        for serial, mid in enumerate(("a", "b", "c"), start=1):
            store.add_machine(mid)
            await store.record_certificate(mid, IssuedCertificate(serial, T))
        a, b, c = (AgentSession(mid, "peer", n) for n, mid in enumerate("abc", start=1))
        live = Liveness(store, lambda: T)
        assert await live.revoked([a, b]) == []
        assert await live.revoked([a, b, c]) == []  # c opened since: only c is looked up
        assert await live.revoked([a, b, c]) == []  # nothing changed: no lookup
        assert store.asked == [["a", "b"], ["c"]]
        store.revoke("b")  # by any replica: every session is looked up again
        assert await live.revoked([a, b, c]) == [b]
        assert store.asked[-1] == ["a", "b", "c"]
        assert await live.revoked([a, b, c]) == [b]  # still open: still reported
        assert store.asked[-1] == ["b"]

    asyncio.run(main())
