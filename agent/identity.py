"""The agent's identity: boot parameters, its private key, and its client certificate.

Boot parameters come from the kernel command line (``/proc/cmdline`` under ``--root``), put
there by the boot plane:

* ``bronze.machine=ID``      — the machine id the token was issued for;
* ``bronze.token=SECRET``    — the single-use bootstrap token;
* ``bronze.server=HOST:PORT`` — the mTLS session endpoint;
* ``bronze.enroll=HOST:PORT`` — the enrollment endpoint (default: same host, port 7443);
* ``bronze.ca=PATH``         — the fleet CA certificate inside the image (default
  ``/etc/bronze/ca.pem``); it is public, baked into the boot image, and lets the agent verify
  the server before it hands over the token.

The private key is generated on the machine (ECDSA P-256), written to the state directory with
mode 0600 and never sent anywhere: enrollment and renewal send a CSR. Enrollment uses one key
until it succeeds (``enroll-key.pem``, kept across retries and restarts): the server answers a
retry of an enrollment whose answer was lost only for the same key (``docs/agent.md``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DEFAULT_ENROLL_PORT = 7443
DEFAULT_CA_PATH = "/etc/bronze/ca.pem"


@dataclass(frozen=True)
class BootParams:
    machine_id: str = ""
    token: str = ""
    server: str = ""
    enroll: str = ""
    ca_path: str = DEFAULT_CA_PATH
    image: str = ""
    """``bronze.image=``: the digest of the OS image the boot plane served (netbooted machines;
    an installed machine knows its image from its slot)."""


def parse_cmdline(text: str) -> BootParams:
    kv: dict[str, str] = {}
    for word in shlex.split(text):
        key, sep, value = word.partition("=")
        if sep and key.startswith("bronze."):
            kv[key.removeprefix("bronze.")] = value
    server = kv.get("server", "")
    enroll = kv.get("enroll", "")
    if server and not enroll:
        enroll = f"{server.rpartition(':')[0] or server}:{DEFAULT_ENROLL_PORT}"
    return BootParams(
        machine_id=kv.get("machine", ""),
        token=kv.get("token", ""),
        server=server,
        enroll=enroll,
        ca_path=kv.get("ca", DEFAULT_CA_PATH),
        image=kv.get("image", ""),
    )


ENDPOINTS_FILE = "endpoints.json"
"""In the state dir: the server, enrollment endpoint and machine id the agent last ran with.
An installed machine boots from its disk with only the image's own kernel arguments (no
``bronze.server=``): the installer copies the state dir (this file with it) into STATE."""


def load_endpoints(state_dir: Path) -> dict[str, str]:
    try:
        doc = json.loads((state_dir / ENDPOINTS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in doc.items() if isinstance(v, str)} if isinstance(doc, dict) else {}


def save_endpoints(state_dir: Path, *, server: str, enroll: str, machine: str, fsync: bool) -> None:
    """Record the endpoints (only when they changed: a simulated fleet starts 1,000 agents)."""
    doc = {"server": server, "enroll": enroll, "machine": machine}
    if load_endpoints(state_dir) != doc:
        write_file(state_dir / ENDPOINTS_FILE, json.dumps(doc).encode(), 0o600, fsync=fsync)


def read_boot_params(root: Path) -> BootParams:
    try:
        return parse_cmdline((root / "proc/cmdline").read_text())
    except OSError:
        return BootParams()


def new_key() -> bytes:
    """A fresh ECDSA P-256 private key (PEM, PKCS#8, unencrypted: the file is 0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def csr_for(key_pem: bytes, machine_id: str) -> bytes:
    """A CSR (PEM) for the key ``key_pem``."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("agent keys are ECDSA")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, machine_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def new_key_and_csr(machine_id: str) -> tuple[bytes, bytes]:
    """A fresh private key and a CSR for it. Returns ``(key_pem, csr_pem)``."""
    key_pem = new_key()
    return key_pem, csr_for(key_pem, machine_id)


def write_file(path: Path, data: bytes, mode: int = 0o644, *, fsync: bool = True) -> None:
    """Atomic write (temp file + rename), created with ``mode`` from the start; missing parent
    directories are made."""
    tmp = path.with_name(f".{path.name}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    try:
        fd = os.open(tmp, flags, mode)
    except FileNotFoundError:  # only then: the parent is there on every write but the first
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, flags, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)  # the umask may have dropped bits at creation
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass
class Credentials:
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc

    def not_before(self) -> dt.datetime:
        return self.cert.not_valid_before_utc

    def valid(self, now: dt.datetime, margin: dt.timedelta = dt.timedelta(seconds=30)) -> bool:
        return now + margin < self.not_after()

    def should_renew(self, now: dt.datetime) -> bool:
        """After two thirds of the lifetime."""
        nb, na = self.not_before(), self.not_after()
        return now >= nb + (na - nb) * 2 / 3


ENROLL_KEY = "enroll-key.pem"


class CredentialStore:
    """``key.pem`` (0600), ``cert.pem``, ``ca.pem`` in the agent's state directory, and
    ``enroll-key.pem`` (0600) while an enrollment is under way."""

    def __init__(self, state_dir: Path, *, fsync: bool = True) -> None:
        self.dir = state_dir
        self._fsync = fsync

    def load(self) -> Credentials | None:
        try:
            return Credentials(
                (self.dir / "key.pem").read_bytes(),
                (self.dir / "cert.pem").read_bytes(),
                (self.dir / "ca.pem").read_bytes(),
            )
        except OSError:
            return None

    def enrollment_key(self) -> bytes:
        """The key every attempt of the enrollment under way uses: made (and written, 0600)
        by the first attempt, kept until :meth:`save` stores the certificate it got. A retry
        with a new key would be refused when the first attempt's answer was lost."""
        path = self.dir / ENROLL_KEY
        try:
            key_pem = path.read_bytes()
            serialization.load_pem_private_key(key_pem, password=None)
            return key_pem
        except (OSError, ValueError, TypeError):
            pass  # none yet, or not a key: a new one (a retry with it is a new enrollment)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_pem = new_key()
        write_file(path, key_pem, 0o600, fsync=self._fsync)
        return key_pem

    def save(self, creds: Credentials) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_file(self.dir / "key.pem", creds.key_pem, 0o600, fsync=self._fsync)
        write_file(self.dir / "cert.pem", creds.cert_pem, fsync=self._fsync)
        write_file(self.dir / "ca.pem", creds.ca_pem, fsync=self._fsync)
        (self.dir / ENROLL_KEY).unlink(missing_ok=True)

    def wipe(self) -> None:
        for name in ("key.pem", "cert.pem", "ca.pem", ENROLL_KEY):
            (self.dir / name).unlink(missing_ok=True)
