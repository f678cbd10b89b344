"""``bronze images build``: build the node OS image, optionally upload it as an image.

The build itself is :mod:`agent.image` (docs/image.md): Debian's kernel plus one initramfs
holding a minimal Debian root, the agent and the fleet CA. It is cached by its inputs; a second
build with the same inputs prints ``cached`` and touches no network. ``--upload NAME`` then
talks to the REST API only: the kernel and initramfs become assets (``PUT /api/v1/assets/{name}
?sha256=``, verified by the server), and ``POST /api/v1/images`` creates image NAME with
version = the build key's first 12 hex digits; ``--key-file`` signs it as ``images sign`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agent.image.build import DEFAULT_ARGS, BuildError, BuildRequest, BuildResult, build_image
from agent.image.cpio import Compression, CpioError
from agent.image.debian import DebianError
from agent.image.modules import ModuleError
from server.cli import images
from server.cli.boot import _chunks
from server.cli.client import Client
from server.cli.common import OutOpt, Output, TokenFileOpt, UrlOpt, call, client, fail

DEFAULT_CACHE = Path("/var/cache/bronze-image")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def summary(r: BuildResult) -> list[str]:
    """The lines printed after a build: key, time, files with size and sha256."""
    how = "reused from the cache" if r.cached else "built"
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in r.steps.items())
    lines = [f"image {r.key[:12]} {how} in {r.seconds:.1f}s ({steps})"]
    lines.append(f"kernel {r.kernel_version}; args: {' '.join(r.args)}")
    for path in (r.kernel, r.initrd):
        lines.append(f"{path}  {_mib(r.sizes[path.name])}  sha256:{r.sha256[path.name]}")
    lines.append(f"total {_mib(sum(r.sizes.values()))}")
    return lines


def upload_asset(cl: Client, path: Path, name: str, sha256: str) -> None:
    """``PUT /api/v1/assets/{name}?sha256=``: the server re-hashes and refuses a mismatch."""
    size = path.stat().st_size
    call(
        cl,
        "PUT",
        f"/api/v1/assets/{name}",
        params={"sha256": sha256},
        content=_chunks(path),
        headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
    )


def build_cmd(
    ca: Annotated[Path, typer.Option("--ca", help="Fleet CA certificate (PEM) the agent trusts.")],
    repo: Annotated[
        Path, typer.Option("--repo", help="bronze source tree the agent wheel is built from.")
    ] = Path("."),
    cache_dir: Annotated[
        Path, typer.Option("--cache-dir", help="Build cache (Debian root, kernel, images).")
    ] = DEFAULT_CACHE,
    arg: Annotated[
        list[str] | None, typer.Option("--arg", help="Default kernel argument (repeat).")
    ] = None,
    compression: Annotated[
        Compression, typer.Option("--compression", help="initramfs compression.")
    ] = Compression.ZSTD,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Rebuild even if cached.")] = False,
    upload: Annotated[
        str | None, typer.Option("--upload", help="Upload as image NAME (assets + image).")
    ] = None,
    key_file: Annotated[
        Path | None, typer.Option("--key-file", help="Ed25519 key to sign the uploaded image.")
    ] = None,
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    output: OutOpt = Output.table,
) -> None:
    """Build the node OS image (kernel + initramfs), cached by its inputs; --upload NAME."""
    if key_file is not None and upload is None:
        fail("--key-file signs an uploaded image: give --upload NAME too")
    req = BuildRequest(
        repo=repo.resolve(),
        ca=ca,
        cache_dir=cache_dir,
        args=tuple(arg) if arg else DEFAULT_ARGS,
        compression=compression,
        use_cache=not no_cache,
    )
    try:
        result = build_image(req, log=lambda m: typer.echo(m, err=True))
    except (BuildError, CpioError, DebianError, ModuleError, OSError) as exc:
        fail(f"image build: {exc}")
    for line in summary(result):
        typer.echo(line, err=output is Output.json)
    if upload is None:
        return
    version = result.key[:12]
    kernel_asset = f"{upload}-{version}-vmlinuz"
    initrd_asset = f"{upload}-{version}-initrd.img"
    cl = client(url, token_file)
    cl.timeout = max(cl.timeout, 300.0)  # a 30 MiB initramfs on a slow link
    for path, asset in ((result.kernel, kernel_asset), (result.initrd, initrd_asset)):
        upload_asset(cl, path, asset, result.sha256[path.name])
        typer.echo(f"uploaded asset {asset}", err=True)
    images.create_image(
        upload, version, kernel_asset, [initrd_asset], list(result.args), url, token_file, output
    )
    if key_file is not None:
        images.sign_image(upload, key_file, url, token_file, output)
