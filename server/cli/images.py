"""``bronze images``: versioned OS images (kernel + initrds + default args, their sha256 frozen).

Signing happens on the operator's machine: ``images keygen`` writes an Ed25519 key pair (the
private key 0600; give the public line to ``BRONZE_IMAGE_TRUSTED_KEYS`` and to the agents), and
``images sign`` fetches the image's canonical manifest, signs it locally and uploads only the
signature. The private key never leaves the machine that signs.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.image_manifest import public_key_text
from server.cli.common import Col, OutOpt, Output, TokenFileOpt, UrlOpt, call, client, fail, show
from server.cli.secretfile import write_secret

app = typer.Typer(no_args_is_help=True, help="OS images (kernel + initrds + args), signed.")

COLUMNS = [
    Col("NAME", lambda i: i["name"], key=True),
    Col("VERSION", lambda i: i["version"], key=True),
    Col("KERNEL", lambda i: i["kernel"]["asset"]),
    Col("INITRDS", lambda i: "\n".join(f["asset"] for f in i["initrds"])),
    Col("SIGNED BY", lambda i: i["signed_by"] or "-", key=True),
    Col("DIGEST", lambda i: i["digest"], key=True, priority=1),
    Col("ARGS", lambda i: " ".join(i["args"]), priority=2),
]


@app.command("list")
def list_images(
    url: UrlOpt = None, token_file: TokenFileOpt = None, output: OutOpt = Output.table
) -> None:
    """List OS images."""
    page = call(client(url, token_file), "GET", "/api/v1/images")
    show(page["items"], output, COLUMNS)


@app.command("show")
def show_image(
    name: str, url: UrlOpt = None, token_file: TokenFileOpt = None, output: OutOpt = Output.table
) -> None:
    """Show one image, with who uses it."""
    show([call(client(url, token_file), "GET", f"/api/v1/images/{name}")], output, COLUMNS)


@app.command("create")
def create_image(
    name: str,
    version: Annotated[str, typer.Option("--version", help="Image version.")],
    kernel: Annotated[str, typer.Option("--kernel", help="Kernel asset name.")],
    initrd: Annotated[
        list[str] | None, typer.Option("--initrd", help="Initrd asset (repeat).")
    ] = None,
    arg: Annotated[
        list[str] | None, typer.Option("--arg", help="Kernel argument (repeat).")
    ] = None,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Create an image from uploaded assets (their sha256 is frozen into its manifest)."""
    body = {
        "name": name,
        "version": version,
        "kernel": kernel,
        "initrds": initrd or [],
        "args": arg or [],
    }
    show([call(client(url, token_file), "POST", "/api/v1/images", json=body)], output, COLUMNS)


@app.command("delete")
def delete_image(
    name: str, url: UrlOpt = None, token_file: TokenFileOpt = None, output: OutOpt = Output.table
) -> None:
    """Delete an image (refused while a machine, profile or rollout names it)."""
    show([call(client(url, token_file), "DELETE", f"/api/v1/images/{name}")], output, COLUMNS)


@app.command("keygen")
def keygen(
    output_file: Annotated[Path, typer.Option("--output-file", help="Private key file (0600).")],
) -> None:
    """Make an Ed25519 signing key; prints the public key for BRONZE_IMAGE_TRUSTED_KEYS."""
    if output_file.exists():
        fail(f"{output_file} exists; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_secret(output_file, pem.decode())
    typer.echo(public_key_text(key))


@app.command("sign")
def sign_image(
    name: str,
    key_file: Annotated[Path, typer.Option("--key-file", help="Ed25519 private key (PEM).")],
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Sign an image's canonical manifest locally and upload the signature."""
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        fail(f"{key_file}: {exc}")
    if not isinstance(key, Ed25519PrivateKey):
        fail(f"{key_file} is not an Ed25519 private key")
    cl = client(url, token_file)
    canonical = call(cl, "GET", f"/api/v1/images/{name}/manifest")["canonical"]
    signature = base64.b64encode(key.sign(canonical.encode())).decode()
    body = {"signature": signature}
    show([call(cl, "PUT", f"/api/v1/images/{name}/signature", json=body)], output, COLUMNS)
