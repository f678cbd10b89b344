"""Session admission: whether an authenticated stream may become its machine's session.

The gRPC layer has already verified the client certificate (fleet CA, validity) and taken the
machine id from its common name. Admission then requires, within ``hello_timeout``:

* the first message is a ``Hello``;
* ``Hello.machine_id``, if present, is the certificate's machine (otherwise
  ``PERMISSION_DENIED "identity mismatch"``);
* the store knows the machine (otherwise ``PERMISSION_DENIED "unknown machine"``);
* the certificate is the machine's current one: not replaced by a later enrollment, not revoked
  (otherwise ``PERMISSION_DENIED "certificate revoked"``; :mod:`.revocation`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from agent.gen import agent_pb2 as pb
from server.agents.store import CERTIFICATE_REVOKED, AgentStore

log = logging.getLogger(__name__)


async def admit(
    store: AgentStore,
    machine_id: str,
    peer: str,
    it: AsyncIterator[pb.AgentMessage],
    context: grpc.aio.ServicerContext,
    *,
    hello_timeout: float,
    cert_serial: int | None,
) -> pb.Hello:
    """The stream's Hello, once the session is admitted (else the RPC is aborted)."""
    try:
        first = await asyncio.wait_for(it.__anext__(), hello_timeout)
    except (TimeoutError, StopAsyncIteration):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected Hello first")
    if first.WhichOneof("body") != "hello":
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected Hello first")
    hello = first.hello
    if hello.machine_id and hello.machine_id != machine_id:
        log.warning(
            "session refused: claimed id differs from certificate cert=%s claimed=%s peer=%s",
            machine_id,
            hello.machine_id,
            peer,
        )
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "identity mismatch")
    refused = await store.session_refusal(machine_id, cert_serial)  # one read, not two
    if refused == CERTIFICATE_REVOKED:
        log.warning(
            "session refused: certificate revoked machine=%s serial=%d peer=%s",
            machine_id,
            cert_serial,
            peer,
        )
    if refused:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
    return hello
