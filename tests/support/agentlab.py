"""An agent lab for tests: a real grpc.aio agent API (real certificates) served from an event
loop in a background thread, sandbox machine roots built from the fixture trees, and
``bronze-agent`` processes started (and stopped, by pid). ``tests/agent/conftest.py`` makes it
the ``lab`` fixture; tests import :class:`Lab` from here for type hints."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from agent.gen import agent_pb2 as pb
from agent.gen import agent_pb2_grpc as pb_grpc
from server.agents import AgentApiServer, MemoryAgentStore
from server.agents.pki import FleetCA
from tests.peers.apiserver import RunningServer
from tests.support.paths import FIXTURES, ROOT
from tests.support.procs import AGENT_BIN
from tests.support.wait import eventually

T = TypeVar("T")


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class Lab:
    tmp: Path
    lt: LoopThread
    store: MemoryAgentStore
    ca: FleetCA
    api: AgentApiServer
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.api.session_port}"

    @property
    def enroll(self) -> str:
        return f"127.0.0.1:{self.api.enroll_port}"

    def issue_token(self, machine_id: str, boot_ref: str = "boot-1") -> str:
        return self.lt.run(self.api.tokens.issue(machine_id, boot_ref))

    def machine_root(self, machine_id: str, fixture: str = "qemu-vm", token: str = "") -> Path:
        """A sandbox root for ``machine_id``: a copy of a fixture tree, the fleet CA baked in,
        and the boot plane's kernel command line."""
        root = self.tmp / machine_id / "root"
        shutil.copytree(FIXTURES / fixture, root, symlinks=True)
        (root / "etc/bronze").mkdir(parents=True, exist_ok=True)
        (root / "etc/bronze/ca.pem").write_bytes(self.ca.cert_pem)
        (root / "proc/cmdline").write_text(
            f"console=ttyS0 bronze.machine={machine_id} bronze.token={token} "
            f"bronze.server={self.server} bronze.enroll={self.enroll}\n"
        )
        return root

    def spawn_agent(self, root: Path, *extra: str) -> subprocess.Popen[bytes]:
        log = open(root.parent / "agent.log", "ab")  # noqa: SIM115 - closed with the process
        # Fault-injection flags exist only in the test harness, not in the shipped command.
        harness = any(a in ("--fault", "--clock-offset", "--enroll-timeout") for a in extra)
        cmd = [sys.executable, "-m", "tests.peers.agent_harness"] if harness else [str(AGENT_BIN)]
        proc = subprocess.Popen(
            [
                *cmd,
                "run",
                "--root",
                str(root),
                "--heartbeat",
                "0.5",
                "--backoff-max",
                "0.5",
                "--no-fsync",
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            cwd=ROOT,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def stop_agent(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def start_machine(
        self, machine_id: str, fixture: str = "qemu-vm", *extra: str
    ) -> tuple[Path, subprocess.Popen[bytes]]:
        self.store.add_machine(machine_id)
        root = self.machine_root(machine_id, fixture, self.issue_token(machine_id))
        proc = self.spawn_agent(root, *extra)
        eventually(lambda: self.api.hub.is_connected(machine_id), 30)
        return root, proc

    def restart_api(self) -> None:
        """Stop the gRPC servers and start new ones (new hub) on the same ports and store."""
        old = self.api
        self.lt.run(old.stop(0))
        self.api = AgentApiServer(
            self.store,
            self.ca,
            enroll_port=old.enroll_port,
            session_port=old.session_port,
            heartbeat_interval=1.0,
        )
        self.api.tokens = old.tokens
        self.lt.run(self.api.start())


@contextmanager
def running_lab(tmp: Path, store: MemoryAgentStore) -> Iterator[Lab]:
    """A :class:`Lab` on ``store``; its agents stopped and its API stopped on exit."""
    lt = LoopThread()
    ca = FleetCA.load_or_create(tmp / "ca")
    api = AgentApiServer(store, ca, heartbeat_interval=1.0)
    lt.run(api.start())
    lab = Lab(tmp, lt, store, ca, api)
    try:
        yield lab
    finally:
        for p in lab.procs:
            lab.stop_agent(p)
        lt.run(lab.api.stop(0))
        lt.close()


def spawn_agent(root: Path, procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    log = open(root.parent / "agent.log", "ab")  # noqa: SIM115 - closed right after the fork
    proc = subprocess.Popen(
        [
            str(AGENT_BIN),
            "run",
            "--root",
            str(root),
            "--heartbeat",
            "0.5",
            "--backoff-max",
            "0.5",
            "--no-fsync",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    procs.append(proc)
    return proc


def hello_message(machine_id: str = "") -> pb.AgentMessage:
    return pb.AgentMessage(hello=pb.Hello(agent_version="test", machine_id=machine_id))


def session_call(
    lab: Lab,
    creds: grpc.ChannelCredentials | None,
    hello: pb.AgentMessage,
    hold: threading.Event | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
) -> grpc.RpcError | None:
    target = lab.server
    opts = [("grpc.use_local_subchannel_pool", 1)]
    ch = grpc.secure_channel(target, creds, opts) if creds else grpc.insecure_channel(target, opts)

    def requests():
        yield hello
        if hold is not None:
            hold.wait(20)

    try:
        stub = pb_grpc.AgentSessionStub(ch)
        for _ in stub.Session(requests(), timeout=10, metadata=metadata):
            pass
        return None
    except grpc.RpcError as exc:
        return exc
    finally:
        ch.close()


def boot_root(srv: RunningServer, tmp: Path, kernel_args: str, fixture: str = "dell-r650") -> Path:
    root = tmp / "node" / "root"
    shutil.copytree(FIXTURES / fixture, root, symlinks=True)
    (root / "etc/bronze").mkdir(parents=True, exist_ok=True)
    (root / "etc/bronze/ca.pem").write_bytes(srv.app.state.agent_api.ca.cert_pem)
    (root / "proc/cmdline").write_text(f"console=ttyS0 {kernel_args}\n")
    return root
