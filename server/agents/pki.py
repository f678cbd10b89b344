"""The fleet's PKI: one CA, a server certificate, short-lived agent certificates.

Trust model (Talos-like): agents are never reached over SSH; they dial the server's gRPC endpoint
over mutual TLS. The fleet CA signs

* the **server certificate** of the gRPC endpoints (SANs: the host names and IP addresses agents
  dial, e.g. ``127.0.0.1``), with extended key usage ``serverAuth``;
* one **client certificate per machine** from a CSR the agent generated (its private key never
  leaves the machine). Its subject CN *is* the machine id — the only identity the session service
  believes (RFC 5280 §4.1.2.6). The certificate is short-lived (24 h by default) and renewed
  over the session before it expires.

Every certificate's NotBefore is **backdated 24 hours** (:data:`DEFAULT_BACKDATE`): a machine
whose clock lags (no RTC battery, NTP not yet synced after boot) must still accept the server's
certificate and present its own. Backdating costs nothing: revocation is by serial and by the
machine's phase, not by issue time.

**Trust bundle.** :attr:`FleetCA.cert_pem` is what the fleet *trusts*: the signing CA's
certificate, followed during a CA rotation by the previous CA's certificate
(``server.agents.pki_files``). Agents receive the bundle at enrollment and renewal; the session
port verifies client certificates against it, so a certificate from either CA works.

On first start :meth:`FleetCA.load_or_create` creates the CA in a directory (key written with mode
0600, never world- or group-readable); an operator may instead supply an existing CA key and cert.
Keys are ECDSA P-256: small certificates and cheap handshakes for thousands of agents.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.crt"
PREVIOUS_CA_CERT_FILE = "ca-previous.crt"
DEFAULT_CLIENT_LIFETIME = dt.timedelta(hours=24)
DEFAULT_BACKDATE = dt.timedelta(hours=24)
CA_LIFETIME = dt.timedelta(days=3650)
SERVER_LIFETIME = dt.timedelta(days=365)


class PkiError(Exception):
    """Root error of the PKI: a CSR or a CA file that cannot be used (never retried)."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file created with mode 0600 (no window where it is readable by others)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


@dataclass(frozen=True)
class KeyPair:
    """A private key and its certificate, both PEM."""

    key_pem: bytes
    cert_pem: bytes


@dataclass(frozen=True)
class IssuedCert:
    cert_pem: bytes
    serial: int
    not_after: dt.datetime


class FleetCA:
    """The fleet CA: signs the server certificate and agents' CSRs."""

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        cert: x509.Certificate,
        *,
        client_lifetime: dt.timedelta = DEFAULT_CLIENT_LIFETIME,
        backdate: dt.timedelta = DEFAULT_BACKDATE,
        now: Callable[[], dt.datetime] = _utcnow,
        previous: Sequence[x509.Certificate] = (),
    ) -> None:
        self._key = key
        self.cert = cert
        self.previous = tuple(previous)
        """CA certificates still trusted but no longer signing (during a rotation)."""
        self.client_lifetime = client_lifetime
        self.backdate = backdate
        self._now = now

    # -- creation / loading -----------------------------------------------------------------------

    @classmethod
    def create(
        cls, name: str = "bronze fleet CA", *, lifetime: dt.timedelta = CA_LIFETIME, **kw: object
    ) -> FleetCA:
        key = _new_key()
        now = _utcnow()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DEFAULT_BACKDATE)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert, **kw)  # type: ignore[arg-type]

    @classmethod
    def from_pem(cls, key_pem: bytes, cert_pem: bytes, **kw: object) -> FleetCA:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError("the fleet CA key must be an EC key")
        cert = x509.load_pem_x509_certificate(cert_pem)
        if spki(cert.public_key()) != spki(key.public_key()):
            raise PkiError("the fleet CA key does not match its certificate")
        return cls(key, cert, **kw)  # type: ignore[arg-type]

    @classmethod
    def load_or_create(cls, directory: Path, **kw: object) -> FleetCA:
        """Load ``ca.key``/``ca.crt`` (and a rotation's ``ca-previous.crt``) from ``directory``;
        create the CA (key mode 0600) if absent."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_path, cert_path = directory / CA_KEY_FILE, directory / CA_CERT_FILE
        if key_path.exists() and cert_path.exists():
            mode = key_path.stat().st_mode & 0o777
            if mode & 0o077:
                log.warning("ca key readable by others; tightening path=%s mode=%o", key_path, mode)
                os.chmod(key_path, 0o600)
            prev_path = directory / PREVIOUS_CA_CERT_FILE
            if prev_path.exists():
                kw = {**kw, "previous": x509.load_pem_x509_certificates(prev_path.read_bytes())}
            return cls.from_pem(key_path.read_bytes(), cert_path.read_bytes(), **kw)
        ca = cls.create(**kw)  # type: ignore[arg-type]
        write_private(key_path, key_to_pem(ca._key))
        cert_path.write_bytes(ca.signer_pem)
        log.info("created fleet CA dir=%s", directory)
        return ca

    @property
    def cert_pem(self) -> bytes:
        """The trust bundle: the signing CA's certificate, then any previous CA still trusted."""
        return b"".join(cert_to_pem(c) for c in self.trusted)

    @property
    def signer_pem(self) -> bytes:
        """The signing CA's certificate alone."""
        return cert_to_pem(self.cert)

    @property
    def trusted(self) -> tuple[x509.Certificate, ...]:
        return (self.cert, *self.previous)

    def now(self) -> dt.datetime:
        return self._now()

    def issuer_of(self, cert: x509.Certificate) -> x509.Certificate | None:
        """The trusted CA certificate that signed ``cert`` (validity dates not checked)."""
        for ca in self.trusted:
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return ca
        return None

    # -- issuing ----------------------------------------------------------------------------------

    def issue_server_cert(self, hosts: Sequence[str]) -> KeyPair:
        """A server key + certificate whose SANs are ``hosts`` (DNS names or IP addresses)."""
        if not hosts:
            raise PkiError("a server certificate needs at least one host name or address")
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        key = _new_key()
        now = self._now()
        cert = (
            self._builder(hosts[0], key.public_key(), now, SERVER_LIFETIME)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(self._key, hashes.SHA256())
        )
        return KeyPair(key_to_pem(key), cert_to_pem(cert))

    def sign_client_csr(
        self, csr_pem: bytes, machine_id: str, *, lifetime: dt.timedelta | None = None
    ) -> IssuedCert:
        """Sign an agent's CSR. The subject is *replaced* by CN=machine_id: what the CSR asks for
        is ignored, the caller (who authenticated the machine) decides the identity."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise PkiError("malformed CSR") from exc
        if not csr.is_signature_valid:
            raise PkiError("CSR signature invalid")
        pub = csr.public_key()
        if isinstance(pub, rsa.RSAPublicKey):
            if pub.key_size < 2048:
                raise PkiError("CSR key too weak")
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            if pub.curve.key_size < 256:  # P-192 and the like: below the CA's own strength
                raise PkiError("CSR key too weak")
        else:
            raise PkiError("CSR key type not supported (use EC or RSA)")
        now = self._now()
        life = lifetime or self.client_lifetime
        cert = (
            self._builder(machine_id, pub, now, life)  # type: ignore[arg-type]
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(self._key, hashes.SHA256())
        )
        return IssuedCert(cert_to_pem(cert), cert.serial_number, cert.not_valid_after_utc)

    def _builder(
        self,
        common_name: str,
        public_key: ec.EllipticCurvePublicKey,
        now: dt.datetime,
        lifetime: dt.timedelta,
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - self.backdate)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )


def spki(public_key: object) -> bytes:
    """DER SubjectPublicKeyInfo, to compare public keys of any type."""
    return public_key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def cert_not_after(cert_pem: bytes) -> dt.datetime:
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def cert_common_name(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""
