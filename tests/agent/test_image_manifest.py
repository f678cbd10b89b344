"""Canonical manifests and Ed25519 signatures shared by the server and the agent."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.image_manifest import (
    ImageFile,
    Manifest,
    ManifestError,
    check_file,
    parse_key,
    parse_keys,
    public_key_text,
    sign,
    verify,
)

M = Manifest(
    name="node-os",
    version="1.2.0",
    kernel=ImageFile("vmlinuz-1.2.0", "a" * 64),
    initrds=(ImageFile("initrd-1.2.0", "b" * 64),),
    args=("console=ttyS0", "quiet"),
)


def test_canonical_bytes_are_stable_and_sorted() -> None:
    data = M.canonical()
    assert data == (
        b'{"args":["console=ttyS0","quiet"],"initrds":[{"file":"initrd-1.2.0","sha256":"'
        + b"b" * 64
        + b'"}],"kernel":{"file":"vmlinuz-1.2.0","sha256":"'
        + b"a" * 64
        + b'"},"name":"node-os","version":"1.2.0"}'
    )
    assert json.loads(data)["kernel"]["file"] == "vmlinuz-1.2.0"
    assert M.digest() == hashlib.sha256(data).hexdigest()


def test_non_ascii_is_escaped() -> None:
    m = Manifest("n", "1", ImageFile("k", "a" * 64), (), ("x=\u00e9",))
    assert b"\\u00e9" in m.canonical()


def test_sign_then_verify_names_the_key() -> None:
    k1, k2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keys = parse_keys([public_key_text(k1), "", public_key_text(k2)])
    assert len(keys) == 2
    assert verify(M, sign(M, k2), keys) == keys[1].key_id


@pytest.mark.parametrize(
    "change",
    [
        {"version": "1.2.1"},
        {"args": ("console=ttyS0",)},
        {"kernel": ImageFile("vmlinuz-1.2.0", "c" * 64)},
        {"initrds": ()},
    ],
    ids=["version", "args", "kernel sha", "initrds"],
)
def test_any_change_breaks_the_signature(change: dict[str, object]) -> None:
    k = Ed25519PrivateKey.generate()
    sig = sign(M, k)
    other = Manifest(**{**M.__dict__, **change})  # type: ignore[arg-type]
    with pytest.raises(ManifestError, match="does not verify against any of the 1 trusted"):
        verify(other, sig, parse_keys([public_key_text(k)]))


def test_untrusted_signer_refused() -> None:
    sig = sign(M, Ed25519PrivateKey.generate())
    with pytest.raises(ManifestError, match="does not verify"):
        verify(M, sig, parse_keys([public_key_text(Ed25519PrivateKey.generate())]))


@pytest.mark.parametrize(
    ("sig", "message"),
    [("not base64!", "not base64"), (base64.b64encode(b"x" * 10).decode(), "64 bytes")],
    ids=["garbage", "short"],
)
def test_malformed_signature(sig: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        verify(M, sig, ())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ssh-ed25519 AAAA", "written ed25519:"),
        ("ed25519:@@@", "does not decode"),
        ("ed25519:" + base64.b64encode(b"x" * 31).decode(), "32 bytes, this one is 31"),
    ],
    ids=["wrong prefix", "bad base64", "short key"],
)
def test_malformed_key(text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_key(text)


def test_check_file() -> None:
    check_file(M.kernel, "a" * 64)
    with pytest.raises(ManifestError, match="vmlinuz-1.2.0: sha256 ccc"):
        check_file(M.kernel, "c" * 64)


def test_from_canonical_round_trips_and_refuses_variants() -> None:
    text = M.canonical().decode()
    assert Manifest.from_canonical(text) == M
    with pytest.raises(ManifestError, match="not in canonical form"):
        Manifest.from_canonical(json.dumps(json.loads(text), indent=1))
    with pytest.raises(ManifestError, match="not an image manifest"):
        Manifest.from_canonical('{"name": "x"}')
