"""OS image manifests: what an image is made of, in one canonical byte string, and its signature.

An image is a kernel, initrds and default kernel arguments, each file named with its SHA-256.
The *canonical manifest* is the JSON object ``{"name", "version", "kernel": {"file", "sha256"},
"initrds": [{"file", "sha256"}, ...], "args": [...]}`` serialized with sorted keys, no
insignificant whitespace and ASCII only, so the server that records an image, the tool that signs
it and the agent that installs it all hash the same bytes (the idea of TUF's and Sigstore's
canonical JSON, reduced to the types we use: strings and lists).

Signatures are Ed25519 over those bytes (RFC 8032; ``cryptography``). A trusted key is written
``ed25519:<base64 of the 32-byte raw public key>``; its *key id* is the first 16 hex digits of
the SHA-256 of the raw key, so operators and logs can name a key without printing it whole.

The server refuses an image whose signature does not verify against a trusted key, and the
agent checks the same again before it writes a slot: neither trusts the other to have checked.
This module is shared by both (the agent never imports the server, so it lives here).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

KEY_PREFIX = "ed25519:"


class ManifestError(ValueError):
    """A key, signature or file that does not check out; the message says which and why."""


@dataclass(frozen=True)
class ImageFile:
    file: str
    """The asset name the file is stored under."""
    sha256: str


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    kernel: ImageFile
    initrds: tuple[ImageFile, ...]
    args: tuple[str, ...]

    def canonical(self) -> bytes:
        doc = {
            "name": self.name,
            "version": self.version,
            "kernel": {"file": self.kernel.file, "sha256": self.kernel.sha256},
            "initrds": [{"file": f.file, "sha256": f.sha256} for f in self.initrds],
            "args": list(self.args),
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    def digest(self) -> str:
        """SHA-256 of the canonical manifest: the image's identity as the agent reports it."""
        return hashlib.sha256(self.canonical()).hexdigest()

    @property
    def files(self) -> tuple[ImageFile, ...]:
        return (self.kernel, *self.initrds)

    @classmethod
    def from_canonical(cls, text: str) -> Manifest:
        """Parse a canonical manifest; ManifestError unless ``text`` is exactly canonical (a
        signature covers bytes, so a re-serialized variant must not pass as the signed one)."""
        try:
            doc = json.loads(text)
            m = cls(
                name=str(doc["name"]),
                version=str(doc["version"]),
                kernel=ImageFile(str(doc["kernel"]["file"]), str(doc["kernel"]["sha256"])),
                initrds=tuple(ImageFile(str(f["file"]), str(f["sha256"])) for f in doc["initrds"]),
                args=tuple(str(a) for a in doc["args"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"not an image manifest: {exc}") from None
        if m.canonical() != text.encode():
            raise ManifestError("the manifest is not in canonical form")
        return m


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    key: Ed25519PublicKey


def parse_key(text: str) -> TrustedKey:
    """``ed25519:BASE64`` -> a trusted key (ManifestError when malformed)."""
    if not text.startswith(KEY_PREFIX):
        raise ManifestError(f"a trusted key is written {KEY_PREFIX}<base64 raw key>")
    try:
        raw = base64.b64decode(text[len(KEY_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ManifestError("a trusted key's base64 does not decode") from exc
    if len(raw) != 32:
        raise ManifestError(f"an Ed25519 public key is 32 bytes, this one is {len(raw)}")
    return TrustedKey(key_id(raw), Ed25519PublicKey.from_public_bytes(raw))


def parse_keys(texts: Iterable[str]) -> tuple[TrustedKey, ...]:
    return tuple(parse_key(t.strip()) for t in texts if t.strip())


def key_id(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_text(private: Ed25519PrivateKey) -> str:
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return KEY_PREFIX + base64.b64encode(raw).decode()


def sign(manifest: Manifest, private: Ed25519PrivateKey) -> str:
    """The base64 signature of the canonical manifest (for `bronze images sign` and tests)."""
    return base64.b64encode(private.sign(manifest.canonical())).decode()


def verify(manifest: Manifest, signature: str, keys: Sequence[TrustedKey]) -> str:
    """The id of the trusted key that signed ``manifest``; ManifestError when none did."""
    try:
        sig = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ManifestError("the signature is not base64") from exc
    if len(sig) != 64:
        raise ManifestError(f"an Ed25519 signature is 64 bytes, this one is {len(sig)}")
    data = manifest.canonical()
    for k in keys:
        try:
            k.key.verify(sig, data)
        except InvalidSignature:
            continue
        return k.key_id
    raise ManifestError(
        f"the signature does not verify against any of the {len(keys)} trusted key(s)"
    )


def check_file(expected: ImageFile, data_sha256: str) -> None:
    if data_sha256 != expected.sha256:
        raise ManifestError(
            f"{expected.file}: sha256 {data_sha256} does not match the manifest's {expected.sha256}"
        )
