"""An enrollment whose answer never reaches the agent: the server has spent the token and issued
a certificate, the agent gave up (its deadline ran out) or restarted. Its retry, with the same
token and the same key, gets that certificate and the agent opens its session. Real agent
processes, a real grpc.aio agent API; the seam is a store that holds the first enrollment's
answer (after the token is spent and the certificate recorded) until the test lets it go."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509

from agent.identity import Credentials, CredentialStore
from server.agents import IssuedCertificate, MemoryAgentStore
from server.types import EventKind
from tests.support.agentlab import Lab, running_lab
from tests.support.wait import eventually


@dataclass
class HeldAnswer(MemoryAgentStore):
    """The first enrollment's answer waits for :attr:`release` once its certificate is
    recorded: to the agent, an answer that never comes."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    held: bool = False

    async def record_certificate(
        self, machine_id: str, cert: IssuedCertificate, *, renewal: bool = False
    ) -> None:
        await super().record_certificate(machine_id, cert, renewal=renewal)
        if not renewal and not self.held:
            self.held = True
            await self.release.wait()


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Lab]:
    store = HeldAnswer()
    with running_lab(tmp_path, store) as lab:
        try:
            yield lab
        finally:
            lab.lt.loop.call_soon_threadsafe(store.release.set)


def _enrolled_once(lab: Lab, machine_id: str, root: Path) -> None:
    """One certificate was issued, the agent holds it (no pending enrollment key left), and it
    was handed out a second time as the answer to a retry."""
    state = root / "var/lib/bronze"
    issued = lab.store.certificates[machine_id]
    held = x509.load_pem_x509_certificate((state / "cert.pem").read_bytes())
    assert [c.serial for c in issued] == [held.serial_number]
    assert not (state / "enroll-key.pem").exists()
    kind = EventKind.AGENT_ENROLL_REPEATED
    again = [e[3]["serial"] for e in lab.store.events if e[0] == machine_id and e[1] == kind]
    assert again == [str(held.serial_number)]


def test_answer_lost_to_the_deadline_retry_with_the_same_key_enrolls(held: Lab) -> None:
    held.store.add_machine("m1")
    root = held.machine_root("m1", token=held.issue_token("m1"))
    # 3 s: above the server's 2 s margin (it spends the token), then the answer is held.
    held.spawn_agent(root, "--enroll-timeout", "3")
    eventually(lambda: held.api.hub.is_connected("m1"), 60)
    _enrolled_once(held, "m1", root)


def test_agent_restarted_before_its_answer_keeps_its_key(held: Lab) -> None:
    held.store.add_machine("m2")
    root = held.machine_root("m2", token=held.issue_token("m2"))
    first = held.spawn_agent(root)
    eventually(lambda: held.store.tokens["m2"].spent is not None, 30)
    assert (root / "var/lib/bronze/enroll-key.pem").stat().st_mode & 0o777 == 0o600
    held.stop_agent(first, signal.SIGKILL)  # while its Enroll waits for the held answer
    held.spawn_agent(root)
    eventually(lambda: held.api.hub.is_connected("m2"), 30)
    _enrolled_once(held, "m2", root)


def test_enrollment_key_is_kept_until_enrolled_and_replaced_if_unreadable(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "state", fsync=False)
    key = store.enrollment_key()
    path = tmp_path / "state/enroll-key.pem"
    assert path.stat().st_mode & 0o777 == 0o600
    assert CredentialStore(tmp_path / "state").enrollment_key() == key  # a restarted agent
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\ntruncated")
    other = store.enrollment_key()
    assert other != key and path.read_bytes() == other
    store.save(Credentials(other, b"cert", b"ca"))
    assert not path.exists() and (tmp_path / "state/key.pem").read_bytes() == other
    assert store.enrollment_key() != other  # the next enrollment: a new key
    store.wipe()
    assert not path.exists()
