"""Real BMC peers for the bmc test suite, started and stopped by the suite itself.

- :func:`start_sushy`: sushy-emulator (Redfish) with its fake driver, per-test state
  dir, on 127.0.0.1; optionally TLS (a CA + leaf made with ``cryptography``) and HTTP
  Basic auth (bcrypt htpasswd). The fake driver applies power changes
  ``randint(1, 11)`` seconds late and has no setting for it; ``delay=(lo, hi)`` runs the
  emulator through a tiny launcher that narrows that range (``None`` keeps the stock 1-11 s).
- :func:`start_ipmi_sim`: OpenIPMI ``ipmi_sim`` with a ``chassis_control`` shell
  program that keeps power/boot in files and logs every call (soft-off recorded).
- :func:`start_pyghmi`: a pyghmi ``Bmc`` subclass (this module run as a script) with a
  settle delay and faithful IPMI boot flags; one process can serve many BMCs.

Every peer listens on 127.0.0.1 only; passwords reach children via the environment or
files, never argv. A peer that cannot start fails the test with its output.

Fault helpers (threads in the test process): a UDP black hole, a TCP server that never
answers, an HTTP proxy that answers 500 N times, a redirecting HTTP server that records
whether credentials arrived.
"""

from __future__ import annotations

import contextlib
import datetime
import http.server
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.ports import free_port
from tests.support.procs import stop_process

LOCAL = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
SYSTEM_UUID = "27946b59-9e44-4fa7-8e91-f3527a1ef094"


# -- processes ----------------------------------------------------------------


@dataclass
class Peer:
    """A running peer: what a test needs to talk to it and to check it independently."""

    kind: str  # "redfish" | "ipmi"
    name: str
    address: str
    port: int
    username: str
    password: str
    proc: subprocess.Popen[bytes] | None
    workdir: Path
    scheme: str = "http"
    ca_pem: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def output(self) -> str:
        log = self.workdir / "peer.log"
        return log.read_text(errors="replace")[-4000:] if log.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc)


def spawn(
    argv: list[str], workdir: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log = open(workdir / "peer.log", "ab")  # noqa: SIM115 - owned by the child
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
        env=full_env,
        start_new_session=True,
    )


def wait_until(
    check, what: str, proc: subprocess.Popen[bytes] | None, workdir: Path, timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            log = (workdir / "peer.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{what} exited with {proc.returncode} before ready:\n{log}")
        try:
            if check():
                return
        except Exception as exc:  # peer not up yet
            last = exc
        time.sleep(0.1)
    stop_process(proc)
    log = (workdir / "peer.log").read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{what} not ready after {timeout}s (last: {last!r}):\n{log}")


# -- TLS material -----------------------------------------------------------------------


def make_tls(workdir: Path, host: str = LOCAL) -> tuple[Path, Path, str]:
    """A CA and a server certificate for ``host``: (cert path, key path, CA PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bronze test BMC CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "server.pem", workdir / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path, ca.public_bytes(serialization.Encoding.PEM).decode()


# -- sushy-emulator ---------------------------------------------------------------------

_SUSHY_LAUNCHER = """
import os, random, sys
from sushy_tools.emulator.resources.systems import fakedriver
lo, hi = (int(x) for x in os.environ["BRONZE_SUSHY_DELAY"].split(","))
class _Narrow:
    def randint(self, a, b):
        return random.randint(lo, hi)
fakedriver.random = _Narrow()
from sushy_tools.emulator.main import main
sys.argv[0] = "sushy-emulator"
sys.exit(main())
"""


def start_sushy(
    workdir: Path,
    *,
    tls: bool = False,
    auth: tuple[str, str] | None = None,
    delay: tuple[int, int] | None = (1, 1),
    power_state: str = "Off",
) -> Peer:
    """sushy-emulator, fake driver, one system. ``delay=None``: stock 1-11 s settle."""
    workdir.mkdir(parents=True, exist_ok=True)
    state_dir = workdir / "state"
    state_dir.mkdir(exist_ok=True)
    port = free_port()
    cfg = [
        "SUSHY_EMULATOR_FAKE_DRIVER = True",
        f"SUSHY_EMULATOR_STATE_DIR = {str(state_dir)!r}",
        f"SUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': {SYSTEM_UUID!r}, 'name': 'node0', "
        f"'power_state': {power_state!r}, 'external_notifier': False, "
        "'nics': [{'mac': '00:5c:52:31:3a:9c', 'ip': '10.99.0.10'}]}]",
        f"SUSHY_EMULATOR_LISTEN_IP = {LOCAL!r}",
    ]
    username, password = auth or ("", "")
    if auth:
        import bcrypt

        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        (workdir / "htpasswd").write_text(f"{username}:{hashed}\n")
        cfg.append(f"SUSHY_EMULATOR_AUTH_FILE = {str(workdir / 'htpasswd')!r}")
    ca_pem = None
    if tls:
        cert, key, ca_pem = make_tls(workdir)
        cfg.append(f"SUSHY_EMULATOR_SSL_CERT = {str(cert)!r}")
        cfg.append(f"SUSHY_EMULATOR_SSL_KEY = {str(key)!r}")
    (workdir / "emulator.conf").write_text("\n".join(cfg) + "\n")
    args = ["--config", str(workdir / "emulator.conf"), "-i", LOCAL, "-p", str(port)]
    if delay is None:
        argv = [str(Path(PY).parent / "sushy-emulator"), *args]
        env = {}
    else:
        argv = [PY, "-c", _SUSHY_LAUNCHER, *args]
        env = {"BRONZE_SUSHY_DELAY": f"{delay[0]},{delay[1]}"}
    proc = spawn(argv, workdir, env)
    scheme = "https" if tls else "http"
    peer = Peer(
        "redfish",
        "sushy-tls" if tls else "sushy",
        LOCAL,
        port,
        username,
        password,
        proc,
        workdir,
        scheme=scheme,
        ca_pem=ca_pem,
    )

    def ready() -> bool:
        with socket.create_connection((LOCAL, port), timeout=0.5):
            return True

    wait_until(ready, "sushy-emulator", proc, workdir)
    return peer


# -- ipmi_sim ---------------------------------------------------------------------------

_CHASSIS_PROGRAM = r"""#!/bin/sh
# ipmi_sim chassis_control program: PROG DIR get power boot | PROG DIR set power 1 ...
dir=$1; shift; op=$1; shift
echo "$op $*" >> "$dir/calls"
if [ "$op" = get ]; then
  for k in "$@"; do
    case $k in
      power) v=$(cat "$dir/power" 2>/dev/null || echo 0) ;;
      boot) v=$(cat "$dir/boot" 2>/dev/null || echo default) ;;
      *) v=$(cat "$dir/$k" 2>/dev/null || echo 0) ;;
    esac
    echo "$k:$v"
  done
  exit 0
fi
while [ $# -ge 2 ]; do
  echo "$2" > "$dir/$1"
  # a soft shutdown is honoured by the (imaginary) OS at once
  if [ "$1" = shutdown ] && [ "$2" = 1 ]; then echo 0 > "$dir/power"; fi
  shift 2
done
"""


def start_ipmi_sim(
    workdir: Path,
    username: str = "admin",
    password: str = "password",  # noqa: S107
    power: int = 0,
) -> Peer:
    workdir.mkdir(parents=True, exist_ok=True)
    chassis = workdir / "chassis"
    chassis.mkdir(exist_ok=True)
    (chassis / "power").write_text(f"{power}\n")
    program = workdir / "chassis.sh"
    program.write_text(_CHASSIS_PROGRAM)
    program.chmod(0o755)
    port = free_port(socket.SOCK_DGRAM)
    (workdir / "lan.conf").write_text(f"""name "bronze"
set_working_mc 0x20
  startlan 1
    addr {LOCAL} {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{program} {chassis}"
  user 2 true "{username}" "{password}" admin 10 none md2 md5 straight
""")
    (workdir / "lan.conf").chmod(0o600)
    (workdir / "sim.emu").write_text(
        "mc_setbmc 0x20\n"
        "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n"
        "mc_enable 0x20\n"
    )
    state = workdir / "simstate"
    state.mkdir(exist_ok=True)
    argv = [
        "ipmi_sim",
        "-c",
        str(workdir / "lan.conf"),
        "-f",
        str(workdir / "sim.emu"),
        "-s",
        str(state),
        "-n",
    ]
    proc = spawn(argv, workdir)
    peer = Peer(
        "ipmi",
        "ipmi_sim",
        LOCAL,
        port,
        username,
        password,
        proc,
        workdir,
        extra={"chassis": chassis, "argv": argv, "env": {}},
    )
    wait_until(lambda: udp_answers(LOCAL, port), "ipmi_sim", proc, workdir)
    return peer


def udp_answers(host: str, port: int, timeout: float = 0.3) -> bool:
    from bmc.probe import get_channel_auth_caps_frame

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        s.send(get_channel_auth_caps_frame())
        return len(s.recv(512)) > 0


# -- pyghmi BMC -------------------------------------------------------------------------


def start_pyghmi(
    workdir: Path,
    username: str = "admin",
    password: str = "password",  # noqa: S107
    count: int = 1,
    settle: float = 0.3,
    no_cycle: bool = False,
) -> Peer:
    """``count`` pyghmi BMCs in one process on consecutive free ports (first in ``port``);
    ``no_cycle``: without chassis power cycle (optional in IPMI; VirtualBMC has none)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ports = [free_port(socket.SOCK_DGRAM) for _ in range(count)]
    events = workdir / "events"
    argv = [
        PY,
        "-m",
        "tests.peers.bmc_peers",
        "pyghmi",
        "--user",
        username,
        "--ports",
        ",".join(map(str, ports)),
        "--settle",
        str(settle),
        "--events",
        str(events),
        *(["--no-cycle"] if no_cycle else []),
    ]
    env = {"BRONZE_SIM_PASSWORD": password, "PYTHONPATH": str(ROOT)}
    proc = spawn(argv, workdir, env=env)
    peer = Peer(
        "ipmi",
        "pyghmi",
        LOCAL,
        ports[0],
        username,
        password,
        proc,
        workdir,
        extra={"ports": ports, "events": events, "argv": argv, "env": env},
    )
    wait_until(lambda: all(udp_answers(LOCAL, p) for p in ports), "pyghmi BMC", proc, workdir)
    return peer


def restart_ipmi_peer(peer: Peer) -> None:
    """Stop an IPMI peer and start it again on the same port(s): every session it held is
    forgotten (a BMC reboot). The pyghmi sim starts powered off; ipmi_sim keeps its chassis
    files."""
    peer.stop()
    peer.proc = spawn(
        list(peer.extra["argv"]),
        peer.workdir,  # type: ignore[call-overload]
        env=dict(peer.extra["env"]),
    )  # type: ignore[call-overload]
    ports = peer.extra.get("ports", [peer.port])
    wait_until(
        lambda: all(udp_answers(LOCAL, p) for p in ports),  # type: ignore[attr-defined]
        f"restarted {peer.name}",
        peer.proc,
        peer.workdir,
    )


def run_pyghmi_sim(
    ports: list[int],
    username: str,
    password: str,
    settle: float,
    events: Path | None,
    no_cycle: bool = False,
) -> None:
    """Serve simulated BMCs forever (the child process of :func:`start_pyghmi`)."""
    import select

    from pyghmi.ipmi import bmc as ghmi_bmc
    from pyghmi.ipmi.private import session as ghmi_session

    # NOTE: pyghmi's io thread drains every socket with setblocking(0) + recvfrom, while the
    # thread answering requests sends on the same sockets after setblocking(1). When the two
    # interleave, the io thread blocks in recvfrom on a socket nobody talks to, and the whole
    # process (100 BMCs in bench/power.py) stops answering until a packet happens to reach
    # that one port (py-spy: io thread in _io_recvfrom, main thread in _io_wait). This made
    # 1-13% of bench cycles fail with timeouts. Send without touching the blocking mode.
    def _io_sendto(sock: socket.socket, packet: bytes, sockaddr: tuple[Any, ...]) -> None:
        for _ in range(50):
            try:
                sock.sendto(packet, sockaddr)
                return
            except BlockingIOError:
                select.select([], [sock], [], 0.1)
            except OSError:
                return

    ghmi_session._io_sendto = _io_sendto
    lock = threading.Lock()

    class SimBmc(ghmi_bmc.Bmc):
        """Power with a settle delay; boot flags stored exactly as written."""

        def __init__(self, port: int) -> None:
            super().__init__({username: password}, port=port, address=LOCAL)
            self.power = "off"
            self.pending: tuple[str, float] | None = None
            self.boot_flags = bytes([0x00, 0x00, 0x00, 0x00, 0x00])

        def _event(self, what: str) -> None:
            if events is not None:
                with lock, open(events, "a") as fh:
                    fh.write(f"{self.port} {what}\n")

        def sessionless_data(self, data, sockaddr):  # type: ignore[no-untyped-def]
            if len(data) > 5 and data[4] == 6 and data[5] & 0x3F == 0x10:
                self._event("session")  # RMCP+ Open Session Request: a new session
            return super().sessionless_data(data, sockaddr)

        def get_system_guid(self) -> Any:
            import uuid as uuidlib

            return uuidlib.UUID(SYSTEM_UUID)  # Get System GUID: the host's SMBIOS UUID

        def _settle(self) -> None:
            if self.pending and time.monotonic() >= self.pending[1]:
                self.power, self.pending = self.pending[0], None

        def _later(self, state: str) -> None:
            self.pending = (state, time.monotonic() + settle)

        def get_power_state(self) -> str:
            self._settle()
            return self.power

        def power_on(self) -> None:
            self._event("on")
            self._settle()
            if self.power != "on":
                self._later("on")

        def power_off(self) -> None:
            self._event("off")
            self._settle()
            if self.power != "off":
                self._later("off")

        def power_shutdown(self) -> None:
            self._event("soft-off")
            self._settle()
            if self.power != "off":
                self._later("off")

        def power_cycle(self) -> None:
            if no_cycle:
                raise NotImplementedError  # pyghmi answers with an error completion code
            self._event("cycle")
            self.power = "off"
            self._later("on")

        def power_reset(self) -> None:
            self._event("reset")
            self._settle()
            if self.power != "on":
                return 0xD5  # type: ignore[return-value] # not in present state

        def get_system_boot_options(self, request, session):  # type: ignore[no-untyped-def]
            if request["data"][0] & 0x7F == 5:
                return session.send_ipmi_response(data=[1, 5, *self.boot_flags])
            session.send_ipmi_response(code=0x80)

        def set_system_boot_options(self, request, session):  # type: ignore[no-untyped-def]
            data = request["data"]
            param = data[0] & 0x7F
            if param == 5:
                self.boot_flags = bytes(data[1:6]).ljust(5, b"\x00")
                self._event("boot " + self.boot_flags.hex())
            session.send_ipmi_response()

    bmcs = [SimBmc(p) for p in ports]
    print(json.dumps({"ready": [b.port for b in bmcs]}), flush=True)
    ghmi_bmc.Bmc.listen()


# -- reference clients (independent of bronze's drivers) -------------------------------


def ipmitool(peer: Peer, *args: str, port: int | None = None, timeout: float = 20) -> str:
    """``ipmitool -I lanplus -C 3 -E``: the password travels in IPMI_PASSWORD, not argv."""
    argv = [
        "ipmitool",
        "-I",
        "lanplus",
        "-C",
        "3",
        "-E",
        "-N",
        "1",
        "-R",
        "3",
        "-H",
        peer.address,
        "-p",
        str(port or peer.port),
        "-U",
        peer.username,
        *args,
    ]
    env = dict(os.environ, IPMI_PASSWORD=peer.password)
    out = subprocess.run(argv, capture_output=True, env=env, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"ipmitool {' '.join(args)} failed: {out.stderr.decode()}")
    return out.stdout.decode()


def redfish_get(peer: Peer, path: str = f"/redfish/v1/Systems/{SYSTEM_UUID}") -> dict:
    """A raw GET with httpx (not sushy)."""
    import httpx

    verify: object = True
    if peer.ca_pem:
        import ssl

        verify = ssl.create_default_context(cadata=peer.ca_pem)
    auth = (peer.username, peer.password) if peer.username else None
    with httpx.Client(verify=verify, trust_env=False, timeout=5) as client:  # type: ignore[arg-type]
        resp = client.get(f"{peer.scheme}://{peer.address}:{peer.port}{path}", auth=auth)
        resp.raise_for_status()
        return resp.json()  # type: ignore[no-any-return]


def reference_power(peer: Peer) -> str:
    """'on' / 'off' as an independent client sees it."""
    if peer.kind == "redfish":
        return str(redfish_get(peer)["PowerState"]).lower()
    out = ipmitool(peer, "chassis", "power", "status")
    return "on" if out.strip().endswith("on") else "off"


def reference_boot(peer: Peer) -> dict[str, object]:
    """The boot override as an independent client sees it."""
    if peer.kind == "redfish":
        boot = redfish_get(peer)["Boot"]
        return {
            "device": boot.get("BootSourceOverrideTarget"),
            "persistent": boot.get("BootSourceOverrideEnabled") == "Continuous",
            "uefi": boot.get("BootSourceOverrideMode") == "UEFI",
        }
    out = ipmitool(peer, "chassis", "bootparam", "get", "5")
    return {"device": out, "persistent": "all future boots" in out, "uefi": "BIOS EFI boot" in out}


# -- fault peers ------------------------------------------------------------------------


@contextlib.contextmanager
def udp_black_hole() -> Iterator[int]:
    """A bound UDP port that reads and drops every datagram."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOCAL, 0))
    sock.settimeout(0.2)
    stop = threading.Event()
    received: list[int] = []

    def loop() -> None:
        while not stop.is_set():
            try:
                received.append(len(sock.recv(4096)))
            except OSError:
                continue

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        t.join(2)
        sock.close()


@contextlib.contextmanager
def tcp_silent() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind((LOCAL, 0))
    srv.listen(64)
    srv.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                held.append(conn)
            except OSError:
                continue

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(2)
        for c in held:
            c.close()
        srv.close()


class _ThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True


@contextlib.contextmanager
def failing_proxy(
    upstream: str,
    failures: int,
    status: int = 500,
    methods: tuple[str, ...] = ("GET", "POST", "PATCH", "DELETE"),
    path_contains: str = "",
) -> Iterator[tuple[int, list[str]]]:
    """HTTP proxy to ``upstream`` (``http://host:port``) answering ``status`` to the first
    ``failures`` requests with a method in ``methods`` and a path containing
    ``path_contains``; yields (port, log of
    "METHOD path status")."""
    log: list[str] = []
    remaining = [failures]
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            with lock:
                fail = remaining[0] > 0 and self.command in methods and path_contains in self.path
                remaining[0] -= fail
            if fail:
                log.append(f"{self.command} {self.path} {status}")
                payload = b'{"error": {"code": "Base.1.0.GeneralError", "message": "busy"}}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in ("host", "connection", "content-length")
            }
            req = urllib.request.Request(  # noqa: S310 - upstream is a test URL
                upstream + self.path, data=body, headers=headers, method=self.command
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                    code, data, rheaders = resp.status, resp.read(), resp.headers
            except urllib.error.HTTPError as exc:
                code, data, rheaders = exc.code, exc.read(), exc.headers
            log.append(f"{self.command} {self.path} {code}")
            self.send_response(code)
            for k, v in rheaders.items():
                if k.lower() not in (
                    "transfer-encoding",
                    "connection",
                    "content-length",
                    "server",
                    "date",
                ):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _handle

    srv = _ThreadingServer((LOCAL, 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1], log
    finally:
        srv.shutdown()
        srv.server_close()


@contextlib.contextmanager
def redirect_pair() -> Iterator[tuple[int, int, list[dict[str, str]]]]:
    """Server A redirects every request to server B (another port = another origin).
    B records the headers it receives. Yields (port A, port B, B's received headers)."""
    seen: list[dict[str, str]] = []

    class Target(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            seen.append(dict(self.headers.items()))
            body = b'{"@odata.id": "/redfish/v1/", "Id": "evil", "RedfishVersion": "1.0.0"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_PATCH = do_GET

    target = _ThreadingServer((LOCAL, 0), Target)
    tport = target.server_address[1]

    class Redirector(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(307)
            self.send_header("Location", f"http://{LOCAL}:{tport}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PATCH = do_GET

    source = _ThreadingServer((LOCAL, 0), Redirector)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (target, source)]
    for t in threads:
        t.start()
    try:
        yield source.server_address[1], tport, seen
    finally:
        for s in (source, target):
            s.shutdown()
            s.server_close()


@contextlib.contextmanager
def fake_ipmi_bmc(ipmi20: bool) -> Iterator[tuple[int, list[tuple[int, int, int]]]]:
    """A minimal UDP IPMI responder for negotiation tests.

    Answers Get Channel Authentication Capabilities advertising IPMI 1.5 only
    (``ipmi20=False``) or IPMI 2.0; answers every RMCP+ Open Session Request with status
    11h (no matching cipher suite) and records the proposed (auth, integrity,
    confidentiality) algorithms. Yields (port, proposals)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOCAL, 0))
    sock.settimeout(0.2)
    stop = threading.Event()
    proposals: list[tuple[int, int, int]] = []

    def checksum(data: bytes) -> int:
        return (-sum(data)) & 0xFF

    def caps_reply(req: bytes) -> bytes:
        auth_type = req[4]
        msg = req[14 + (16 if auth_type else 0) :]
        rq_seq_lun = msg[4]
        head = bytes([0x81, (0x07 << 2) | (rq_seq_lun & 3)])
        support = 0x14 | (0x80 if ipmi20 else 0)  # md5 + straight (+ IPMI 2.0 ext)
        ext = 0x03 if ipmi20 else 0x01
        body = bytes([0x20, rq_seq_lun, 0x38, 0x00, 0x01, support, 0x04, ext, 0, 0, 0, 0])
        out = head + bytes([checksum(head)]) + body + bytes([checksum(body)])
        return bytes([6, 0, 0xFF, 7, 0]) + bytes(8) + bytes([len(out)]) + out

    def open_session_reply(req: bytes) -> bytes:
        payload = req[16:]
        proposals.append((payload[12] & 0x3F, payload[20] & 0x3F, payload[28] & 0x3F))
        body = bytes([payload[0], 0x11, 0, 0]) + payload[4:8]
        return (
            bytes([6, 0, 0xFF, 7, 0x06, 0x11]) + bytes(8) + len(body).to_bytes(2, "little") + body
        )

    def loop() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(4096)
            except OSError:
                continue
            if len(data) < 6 or data[3] != 7:
                continue
            if data[4] == 0x06 and data[5] & 0x3F == 0x10:
                sock.sendto(open_session_reply(data), addr)
            elif data[4] != 0x06:
                sock.sendto(caps_reply(data), addr)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield sock.getsockname()[1], proposals
    finally:
        stop.set()
        t.join(2)
        sock.close()


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="bmc_peers")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pyghmi", help="serve simulated pyghmi BMCs on 127.0.0.1")
    p.add_argument("--user", default="admin")
    p.add_argument("--ports", required=True, help="comma-separated UDP ports")
    p.add_argument("--settle", type=float, default=0.3)
    p.add_argument("--events", default=None)
    p.add_argument("--no-cycle", action="store_true", help="no chassis power cycle")
    args = parser.parse_args(argv)
    password = os.environ.get("BRONZE_SIM_PASSWORD", "password")
    run_pyghmi_sim(
        [int(x) for x in args.ports.split(",")],
        args.user,
        password,
        args.settle,
        Path(args.events) if args.events else None,
        args.no_cycle,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
