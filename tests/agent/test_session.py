"""End to end over real gRPC + real certificates, with `bronze-agent` in its own process."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import shutil
import signal
import subprocess
import threading
import time
import weakref

import grpc
import pytest

from agent.gen import agent_pb2 as pb
from agent.gen import agent_pb2_grpc as pb_grpc
from agent.identity import new_key_and_csr
from server.agents import (
    AgentApiError,
    AgentDisconnected,
    ApplyMode,
    DesiredConfig,
    IssuedCertificate,
    NodeOpKind,
)
from server.agents.pki import FleetCA
from server.config import Layer, Patch, render
from tests.support.agentlab import Lab, hello_message, session_call
from tests.support.paths import FIXTURES
from tests.support.procs import AGENT_BIN
from tests.support.wait import eventually


def _config(hostname: str, **extra: object) -> tuple[str, str]:
    r = render(
        [
            Patch(
                "fleet",
                Layer.FLEET,
                {"sysctls": {"vm.swappiness": "10"}, "time": {"servers": ["ntp.example.net"]}},
            ),
            Patch("m", Layer.MACHINE, {"hostname": hostname, **extra}),
        ]
    )
    return r.version, r.canonical_json


def _applies(root, version: str) -> int:
    log = (root / "var/lib/bronze/applies.log").read_text()
    return sum(1 for line in log.splitlines() if line.split()[1] == version)


def test_enroll_hello_config_applied_node_ops(lab: Lab) -> None:
    root, _ = lab.start_machine("m1", "dell-r650")
    hello = lab.store.hellos["m1"]
    assert hello.inventory["smbios"]["vendor"] == "Dell Inc."
    assert len(hello.inventory["disks"]) == 5
    assert hello.inventory["bmc_address"] == "10.10.0.21"
    assert len(lab.store.certificates["m1"]) == 1
    key = root / "var/lib/bronze/key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert lab.store.tokens["m1"].spent is not None  # consumed

    version, doc = _config("node-1", files={"/etc/motd": {"content": "hi\n"}})
    cid = lab.lt.run(lab.api.hub.push_config("m1", version, doc))
    out = lab.lt.run(lab.api.hub.wait_result(cid, 10))
    assert out.ok and out.applied_version == version
    assert (root / "etc/hostname").read_text() == "node-1\n"
    assert (root / "etc/motd").read_text() == "hi\n"
    assert (root / "proc/sys/vm/swappiness").read_text() == "10\n"
    assert json.loads((root / "var/lib/bronze/config.json").read_text())["version"] == version
    assert lab.store.applied["m1"] == version
    assert lab.store.pending.get("m1") == {}

    # Same version again: a no-op that still reports success.
    cid = lab.lt.run(lab.api.hub.push_config("m1", version, doc))
    assert lab.lt.run(lab.api.hub.wait_result(cid, 10)).ok
    assert _applies(root, version) == 1

    hub = lab.api.hub
    dmesg = lab.lt.run(hub.node_op("m1", NodeOpKind.DMESG))
    assert b"Linux version" in dmesg.output
    logs = lab.lt.run(hub.node_op("m1", NodeOpKind.LOGS, service="chronyd", tail_lines=3))
    assert logs.ok and logs.output.count(b"\n") == 3 and b"#39" in logs.output
    stats = json.loads(lab.lt.run(hub.node_op("m1", NodeOpKind.STATS)).output)
    assert stats["memory_total_bytes"] > 0
    assert b"chronyd" in lab.lt.run(hub.node_op("m1", NodeOpKind.PS)).output
    assert b"containerd" in lab.lt.run(hub.node_op("m1", NodeOpKind.SERVICES)).output
    bad = lab.lt.run(hub.node_op("m1", NodeOpKind.LOGS, service="../../etc/shadow"))
    assert not bad.ok and "invalid service" in bad.error

    # Heartbeats are flushed to the store in batches.
    eventually(lambda: "m1" in lab.store.seen, 10)


# -- refusals ---------------------------------------------------------------------------------


def _client_creds(lab: Lab, key_pem: bytes, cert_pem: bytes) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(lab.ca.cert_pem, key_pem, cert_pem)


def _cert_for(ca: FleetCA, machine_id: str, **kw) -> tuple[bytes, bytes]:
    key, csr = new_key_and_csr(machine_id)
    return key, ca.sign_client_csr(csr, machine_id, **kw).cert_pem


def _enrolled_cert(lab: Lab, machine_id: str) -> tuple[bytes, bytes]:
    """A certificate from the fleet CA that the store recorded (as Enroll does): a certificate
    the server never recorded is not current and opens no session."""
    key, csr = new_key_and_csr(machine_id)
    issued = lab.ca.sign_client_csr(csr, machine_id)
    cert = IssuedCertificate(issued.serial, issued.not_after)
    lab.lt.run(lab.store.record_certificate(machine_id, cert))
    return key, issued.cert_pem


def test_session_refuses_plaintext_missing_foreign_and_expired_certs(lab: Lab) -> None:
    lab.store.add_machine("m1")
    cases = {
        "plaintext": None,
        "no-client-cert": grpc.ssl_channel_credentials(lab.ca.cert_pem),
        "other-ca": _client_creds(lab, *_cert_for(FleetCA.create(), "m1")),
    }
    past = FleetCA(
        lab.ca._key, lab.ca.cert, now=lambda: dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    )
    cases["expired"] = _client_creds(lab, *_cert_for(past, "m1"))
    for name, creds in cases.items():
        err = session_call(lab, creds, hello_message())
        assert err is not None, name
        # NOTE: a refused TLS handshake surfaces as UNAVAILABLE in gRPC, not UNAUTHENTICATED.
        assert err.code() == grpc.StatusCode.UNAVAILABLE, (name, err)
    assert not lab.api.hub.connected()
    assert "m1" not in lab.store.hellos


def test_identity_comes_from_the_certificate(lab: Lab) -> None:
    lab.store.add_machine("a")
    lab.store.add_machine("b")
    creds = _client_creds(lab, *_enrolled_cert(lab, "a"))
    # A's certificate claiming to be B: refused.
    err = session_call(lab, creds, hello_message("b"))
    assert err is not None and err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "b" not in lab.store.hellos and "a" not in lab.store.hellos
    # Without a claim (or with metadata saying otherwise) the session is A's, never B's.
    version, doc = _config("for-b")
    lab.lt.run(lab.api.hub.push_config("b", version, doc))
    hold = threading.Event()
    t = threading.Thread(
        target=session_call,
        args=(lab, creds, hello_message(), hold),
        kwargs={"metadata": (("x-machine-id", "b"),)},
    )
    t.start()
    try:
        eventually(lambda: lab.api.hub.is_connected("a"))
        assert not lab.api.hub.is_connected("b")
        assert len(lab.store.pending["b"]) == 1  # B's command was not sent to A
    finally:
        hold.set()
        t.join(10)


def test_unknown_machine_with_valid_cert_refused(lab: Lab) -> None:
    creds = _client_creds(lab, *_cert_for(lab.ca, "deleted-machine"))
    err = session_call(lab, creds, hello_message())
    assert err is not None and err.code() == grpc.StatusCode.PERMISSION_DENIED


def _enroll(lab: Lab, machine_id: str, token: str) -> pb.EnrollResponse:
    with grpc.secure_channel(lab.enroll, grpc.ssl_channel_credentials(lab.ca.cert_pem)) as ch:
        _, csr = new_key_and_csr(machine_id)
        return pb_grpc.EnrollmentStub(ch).Enroll(
            pb.EnrollRequest(bootstrap_token=token, machine_id=machine_id, csr_pem=csr.decode()),
            timeout=10,
        )


def test_enrollment_token_reuse_expiry_and_unknown_all_same_error(lab: Lab) -> None:
    lab.store.add_machine("m1")
    lab.store.add_machine("m2")
    token = lab.issue_token("m1")
    resp = _enroll(lab, "m1", token)
    assert "BEGIN CERTIFICATE" in resp.cert_pem
    expired = lab.lt.run(lab.api.tokens.issue("m2", "b", ttl=dt.timedelta(seconds=-1)))
    errors = []
    for mid, tok in [("m1", token), ("m2", expired), ("ghost", token), ("m1", "garbage")]:
        with pytest.raises(grpc.RpcError) as ei:
            _enroll(lab, mid, tok)
        errors.append((ei.value.code(), ei.value.details()))
    assert set(errors) == {(grpc.StatusCode.UNAUTHENTICATED, "enrollment denied")}


def test_enrollment_port_does_not_serve_sessions(lab: Lab) -> None:
    with grpc.secure_channel(lab.enroll, grpc.ssl_channel_credentials(lab.ca.cert_pem)) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            for _ in pb_grpc.AgentSessionStub(ch).Session(iter([hello_message()]), timeout=5):
                pass
    assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED


# -- delivery guarantees ------------------------------------------------------------------------


def test_disconnect_before_result_resends_and_applies_once(lab: Lab) -> None:
    root, _ = lab.start_machine("m1", "qemu-vm", "--fault", "drop-before-result")
    version, doc = _config("once")
    lab.lt.run(lab.api.hub.push_config("m1", version, doc))
    eventually(lambda: lab.store.applied.get("m1") == version, 20)
    eventually(lambda: lab.store.pending["m1"] == {}, 10)
    assert _applies(root, version) == 1
    assert "dropped before sending the result" in (root.parent / "agent.log").read_text()


def test_pending_command_survives_agent_outage_and_server_restart(lab: Lab) -> None:
    root, proc = lab.start_machine("m1")
    lab.stop_agent(proc)
    eventually(lambda: not lab.api.hub.is_connected("m1"))
    version, doc = _config("after-restart")
    lab.lt.run(lab.api.hub.push_config("m1", version, doc))
    assert len(lab.store.pending["m1"]) == 1
    lab.restart_api()  # a new hub: only the store remembers the command
    lab.spawn_agent(root)  # same machine, same state dir: reuses its certificate
    eventually(lambda: lab.store.applied.get("m1") == version, 20)
    assert (root / "etc/hostname").read_text() == "after-restart\n"
    assert _applies(root, version) == 1
    assert len(lab.store.certificates["m1"]) == 1  # no re-enrollment


def test_server_restart_while_connected_reconnects(lab: Lab) -> None:
    root, _ = lab.start_machine("m1")
    lab.restart_api()
    eventually(lambda: lab.api.hub.is_connected("m1"), 20)
    version, doc = _config("again")
    cid = lab.lt.run(lab.api.hub.push_config("m1", version, doc))
    assert lab.lt.run(lab.api.hub.wait_result(cid, 10)).ok


# -- apply modes --------------------------------------------------------------------------------


def test_try_mode_reverts_unless_confirmed(lab: Lab) -> None:
    root, _ = lab.start_machine("m1")
    hub = lab.api.hub
    v1, d1 = _config("base")
    assert lab.lt.run(hub.wait_result(lab.lt.run(hub.push_config("m1", v1, d1)), 10)).ok

    v2, d2 = _config("trial")
    cid = lab.lt.run(hub.push_config("m1", v2, d2, ApplyMode.TRY, try_timeout_seconds=2))
    assert lab.lt.run(hub.wait_result(cid, 10)).applied_version == v2
    assert (root / "etc/hostname").read_text() == "trial\n"
    eventually(lambda: (root / "etc/hostname").read_text() == "base\n", 10)
    eventually(lambda: lab.store.applied["m1"] == v1, 10)

    # The reverted version is still the desired one: a reconnect must not push it for good.
    lab.store.desired["m1"] = DesiredConfig(v2, d2)
    lab.restart_api()
    eventually(lambda: lab.api.hub.is_connected("m1"), 20)
    hub = lab.api.hub
    eventually(lambda: hub.counters["heartbeat"] >= 2, 10)
    assert hub.counters["commands_sent"] == 0 and lab.store.pending.get("m1") == {}
    assert (root / "etc/hostname").read_text() == "base\n"
    del lab.store.desired["m1"]

    v3, d3 = _config("confirmed")
    cid = lab.lt.run(hub.push_config("m1", v3, d3, ApplyMode.TRY, try_timeout_seconds=2))
    assert lab.lt.run(hub.wait_result(cid, 10)).ok
    assert lab.lt.run(hub.wait_result(lab.lt.run(hub.confirm_config("m1", v3)), 10)).ok
    time.sleep(2.5)
    assert (root / "etc/hostname").read_text() == "confirmed\n"
    assert lab.store.applied["m1"] == v3


def test_staged_no_reboot_and_auto_reboot(lab: Lab) -> None:
    root, _ = lab.start_machine("m1")
    hub = lab.api.hub
    boot0 = lab.store.hellos["m1"].boot_id
    v1, d1 = _config("k1", kernel_args=["quiet"])

    # no-reboot refuses a change that needs a reboot
    out = lab.lt.run(
        hub.wait_result(lab.lt.run(hub.push_config("m1", v1, d1, ApplyMode.NO_REBOOT)), 10)
    )
    assert not out.ok and "kernel_args" in out.error

    # staged: accepted, not in effect until the next boot
    out = lab.lt.run(
        hub.wait_result(lab.lt.run(hub.push_config("m1", v1, d1, ApplyMode.STAGED)), 10)
    )
    assert out.ok and out.applied_version != v1
    assert lab.store.hellos["m1"].boot_id == boot0
    lab.lt.run(hub.reboot("m1"))
    eventually(lambda: lab.store.hellos["m1"].boot_id != boot0, 20)
    assert lab.store.hellos["m1"].config_version == v1
    assert (root / "var/lib/bronze/boot/kernel-args").read_text() == "quiet\n"

    # auto: a boot-time change reboots by itself
    boot1 = lab.store.hellos["m1"].boot_id
    v2, d2 = _config("k2", kernel_args=["quiet", "nomodeset"])
    out = lab.lt.run(hub.wait_result(lab.lt.run(hub.push_config("m1", v2, d2)), 10))
    assert out.ok
    eventually(lambda: lab.store.hellos["m1"].boot_id != boot1, 20)
    eventually(lambda: lab.store.applied["m1"] == v2, 10)
    assert (root / "etc/hostname").read_text() == "k2\n"


def test_certificate_renewal_over_the_session(lab: Lab) -> None:
    root, _ = lab.start_machine("m1")
    before = (root / "var/lib/bronze/cert.pem").read_bytes()
    lab.lt.run(lab.api.hub.renew_certificate("m1"))
    eventually(lambda: len(lab.store.certificates["m1"]) == 2, 10)
    eventually(lambda: (root / "var/lib/bronze/cert.pem").read_bytes() != before, 10)
    # The renewed certificate is accepted on the next connection.
    lab.restart_api()
    eventually(lambda: lab.api.hub.is_connected("m1"), 20)


def test_agent_killed_is_noticed(lab: Lab) -> None:
    _, proc = lab.start_machine("m1")
    proc.send_signal(signal.SIGKILL)
    proc.wait(5)
    eventually(lambda: not lab.api.hub.is_connected("m1"), 10)
    assert "m1" in lab.store.disconnected


def test_simulate_many_machines_each_with_own_connection_and_reboot(lab: Lab) -> None:
    ids = [f"sim-{i}" for i in range(3)]
    tokens = {}
    for mid in ids:
        lab.store.add_machine(mid)
        tokens[mid] = lab.issue_token(mid)
    (lab.tmp / "tokens.json").write_text(json.dumps(tokens))
    (lab.tmp / "ca.pem").write_bytes(lab.ca.cert_pem)
    shutil.copytree(FIXTURES / "qemu-vm", lab.tmp / "tpl", symlinks=True)
    proc = subprocess.Popen(
        [
            str(AGENT_BIN),
            "simulate",
            "--count",
            "3",
            "--root-template",
            str(lab.tmp / "tpl"),
            "--work",
            str(lab.tmp / "sim"),
            "--server",
            lab.server,
            "--enroll",
            lab.enroll,
            "--ca",
            str(lab.tmp / "ca.pem"),
            "--tokens",
            str(lab.tmp / "tokens.json"),
            "--heartbeat",
            "0.5",
            "--ramp",
            "0.2",
        ],
    )
    lab.procs.append(proc)
    eventually(lambda: all(lab.api.hub.is_connected(m) for m in ids), 30)
    peers = {lab.api.hub.registry.get(m).peer for m in ids}  # type: ignore[union-attr]
    assert len(peers) == 3  # one TCP connection (source port) per simulated machine
    assert len({lab.store.hellos[m].inventory["smbios"]["uuid"] for m in ids}) == 3
    version, doc = _config("sim")
    for m in ids:
        lab.lt.run(lab.api.hub.push_config(m, version, doc))
    eventually(lambda: all(lab.store.applied.get(m) == version for m in ids), 20)
    assert (lab.tmp / "sim/sim-0/root/etc/hostname").read_text() == "sim\n"
    assert (lab.tmp / "tpl/etc/hostname").read_text() == "vm-0001\n"  # hard-linked template intact
    boot0 = lab.store.hellos["sim-1"].boot_id
    lab.lt.run(lab.api.hub.reboot("sim-1"))
    eventually(lambda: lab.store.hellos["sim-1"].boot_id != boot0, 20)
    assert lab.api.hub.is_connected("sim-1")


def test_silent_session_is_closed_after_missed_heartbeats(lab: Lab) -> None:
    """A peer that keeps TCP open but stops heartbeating (hung agent) is dropped."""
    lab.store.add_machine("a")
    lab.api.hub.seen_flush_interval = 0.5  # sweep often (the sweeper reads it each round)
    creds = _client_creds(lab, *_enrolled_cert(lab, "a"))
    hold = threading.Event()
    t = threading.Thread(target=session_call, args=(lab, creds, hello_message(), hold))
    t.start()
    try:
        eventually(lambda: lab.api.hub.is_connected("a"))
        # heartbeat_interval is 1 s in the lab: closed after ~3 s of silence
        eventually(lambda: not lab.api.hub.is_connected("a"), 10)
    finally:
        hold.set()
        t.join(10)


def test_followed_log_streams_appends_and_stops_when_the_caller_leaves(lab: Lab) -> None:
    root, proc = lab.start_machine("m1")
    hub = lab.api.hub
    log = root / "var/log/bronze/chronyd.log"
    got: list[bytes] = []

    async def consume(tail_lines: int = 0) -> None:
        async for chunk in hub.node_op_stream(
            "m1", NodeOpKind.LOGS, service="chronyd", follow=True, timeout=10, tail_lines=tail_lines
        ):
            got.append(chunk)

    task = asyncio.run_coroutine_threadsafe(consume(tail_lines=1), lab.lt.loop)
    last = log.read_bytes().splitlines(keepends=True)[-1]
    eventually(lambda: b"".join(got) == last, 10)
    with log.open("ab") as fh:
        fh.write(b"appended one\n")
    eventually(lambda: b"".join(got).endswith(b"appended one\n"), 10)
    with log.open("ab") as fh:
        fh.write(b"appended two\n")
    eventually(lambda: b"".join(got).endswith(b"appended two\n"), 10)
    assert hub.open_streams() == 1

    # The caller leaves: the hub forgets the stream and tells the agent, which stops reading.
    task.cancel()
    eventually(lambda: hub.open_streams() == 0, 10)
    agent_log = root.parent / "agent.log"
    eventually(lambda: "node op cancelled" in agent_log.read_text(), 10)
    assert hub.is_connected("m1")  # the session itself goes on
    assert lab.lt.run(hub.node_op("m1", NodeOpKind.STATS)).ok

    # Follow is only for logs and dmesg.
    async def follow_ps() -> None:
        async for _ in hub.node_op_stream("m1", NodeOpKind.PS, follow=True, timeout=10):
            pass

    with pytest.raises(AgentApiError, match="only possible for logs and dmesg"):
        lab.lt.run(follow_ps())

    # The agent goes away in the middle of a follow: the caller gets a clear error.
    got.clear()
    task = asyncio.run_coroutine_threadsafe(consume(), lab.lt.loop)
    eventually(lambda: got, 10)
    proc.send_signal(signal.SIGKILL)
    proc.wait(5)
    with pytest.raises(AgentDisconnected, match="m1 disconnected"):
        task.result(20)
    assert hub.open_streams() == 0


def test_an_ended_session_is_freed_without_the_cyclic_gc(lab: Lab) -> None:
    """An ended session must go with its last reference, not wait for a full GC pass: after a
    reconnect wave at 10,000 agents the old sessions (and the gRPC call objects their readers
    hold) otherwise stay in memory beside the new ones (docs/performance.md, round 3)."""
    _, proc = lab.start_machine("m1")
    session = lab.api.hub.registry.get("m1")
    assert session is not None and session.reader is not None
    ref = weakref.ref(session)
    del session
    gc.collect()
    gc.disable()
    try:
        # Closed by the server (its reader task is cancelled), as at a shutdown or a revocation.
        assert lab.api.hub.close_session("m1")
        eventually(lambda: ref() is None, 10)
    finally:
        gc.enable()
        lab.stop_agent(proc)
