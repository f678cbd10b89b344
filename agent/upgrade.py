"""The agent's side of upgrades: its install disk's A/B slots, seen through the session.

* ``Upgrade`` (``upgrade()``): parse the canonical manifest, check the signature when the agent
  has trusted keys (it refuses what the server should have refused), stream every file from the
  server into the *inactive* slot while hashing (``agent.install``: the active slot is never
  written; a failure leaves the machine as it was, nothing armed), arm the bootloader to try the
  new slot (``tries`` boots, the current slot as fallback), record ``preserve``, then reboot.
* ``Install`` (``install_image()``): provisioning writes the image to a machine's disk (GPT,
  slot A, GRUB; ``agent.install.installer``), or for a simulated machine to its sandbox disk
  under ``ROOT/system``; the same checks as an upgrade, then the agent reboots into the disk.
* ``MarkGood`` (``mark_good()``): the server found the machine healthy on the image it booted:
  that slot becomes the default, the last good one.
* Every boot (``on_boot()``): on the first boot of a new slot with ``preserve=false``, EPHEMERAL
  is wiped, never earlier (the new slot is then known to boot). An unconfirmed boot arms the
  agent's own watchdog: not marked good within ``confirm_timeout_seconds``, it reboots, and boot
  counting returns to the last good slot (a machine without a BMC recovers too).

A slot's manifest ``version`` is the image's digest (SHA-256 of its canonical manifest), so what
the agent reports in ``Hello`` is exactly what the server planned.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from agent.gen import agent_pb2 as pb
from agent.identity import write_file
from agent.image_manifest import Manifest, ManifestError, TrustedKey, verify
from agent.install import (
    BlockBackend,
    InstallError,
    SandboxBackend,
    SlotError,
    SlotStore,
    grub_boot,
    installer,
)
from agent.install import Manifest as SlotManifest
from agent.install.boot import Slot, slot_from_cmdline
from agent.install.sandbox import install_sandbox
from agent.install.slots import SlotBackend

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

WATCHDOG_FILE = "upgrade-watchdog.json"
STATE_MOUNT = Path("/system/state")
"""Where the OS image's ``/init`` mounts STATE on an installed machine (agent/image)."""


class UpgradeRefused(Exception):
    """The upgrade was not applied; the message says why (sent back as the command's error)."""


@dataclass(frozen=True)
class SlotReport:
    image_digest: str
    slot: str
    last_good_digest: str


Source = Callable[[str], Callable[[], BinaryIO]]


@functools.cache
def http_client() -> httpx.Client:
    """One HTTP client for the process, shared by every download (httpx clients are safe to
    share between threads). ``httpx.get`` builds a client per call, and with it an SSL context
    that loads the CA bundle (~30 ms of CPU, even for ``http://`` URLs): a simulator upgrading
    100 machines at once spent three quarters of its core there. Kept-alive connections also
    spare the server a TCP accept per file."""
    import httpx  # noqa: PLC0415 - ~20% of the agent's imports, unused before an upgrade

    return httpx.Client(follow_redirects=False)


def _http_error() -> type[Exception]:
    import httpx  # noqa: PLC0415 - see http_client

    return httpx.HTTPError


def fetcher(timeout: float = 60.0, patience: float = 90.0) -> Source:
    """Each URL becomes a callable returning the file's body (``agent.install`` hashes what it
    writes against the manifest, so a wrong or truncated body fails the slot write). A server
    that does not answer, or answers 5xx, is asked again with capped backoff for ``patience``
    seconds: a server restarting (or a replica failing over) must not fail the upgrade, which the
    server's own write deadline bounds anyway. A 4xx is final: asking again gets the same."""

    def source(url: str) -> Callable[[], BinaryIO]:
        def open_stream() -> BinaryIO:
            deadline = time.monotonic() + patience
            attempt = 0
            while True:
                try:
                    resp = http_client().get(url, timeout=timeout)
                except _http_error() as exc:
                    error = f"{url}: {type(exc).__name__}: {exc}"
                else:
                    if resp.status_code == 200:
                        return io.BytesIO(resp.content)
                    error = f"{url}: HTTP {resp.status_code}"
                    if resp.status_code < 500:
                        raise InstallError(error)
                delay = min(5.0, 0.5 * 2**attempt)
                if time.monotonic() + delay > deadline:
                    raise InstallError(error)
                time.sleep(delay)
                attempt += 1

        return open_stream

    return source


def checked_manifest(
    manifest_json: str, signature: str, urls: int, keys: Sequence[TrustedKey]
) -> Manifest:
    """The image's manifest, its signature verified when the agent has trusted keys (it refuses
    what the server should have refused). UpgradeRefused says why not."""
    try:
        manifest = Manifest.from_canonical(manifest_json)
        if keys:
            if not signature:
                raise UpgradeRefused("the image is unsigned and this agent has trusted keys")
            verify(manifest, signature, keys)
    except ManifestError as exc:
        raise UpgradeRefused(str(exc)) from None
    if urls != len(manifest.files):
        raise UpgradeRefused(f"{len(manifest.files)} files but {urls} urls")
    return manifest


def slot_manifest_of(manifest: Manifest) -> SlotManifest:
    return SlotManifest(
        version=manifest.digest(),
        kernel=manifest.kernel.file,
        initrds=tuple(f.file for f in manifest.initrds),
        kernel_args=manifest.args,
        sha256={f.file: f.sha256 for f in manifest.files},
    )


def install_image(
    cmd: pb.Install,
    keys: Sequence[TrustedKey],
    source: Source,
    root: Path,
    state_dir: Path,
    slots: NodeSlots | None,
) -> str:
    """Provisioning: write the image to the disk, slot A, last good A; returns its digest.

    A machine already installed with this image answers as if it had just written it (a command
    re-sent after a crash); with another image it refuses (that is an upgrade). ``root`` other
    than ``/`` is a simulated machine: its disk is the sandbox ``ROOT/system``. UpgradeRefused:
    the disk may be half written but the machine was not told to boot it."""
    manifest = checked_manifest(cmd.manifest_json, cmd.signature, len(cmd.urls), keys)
    digest = manifest.digest()
    if slots is not None:
        running = slots.report().image_digest
        if running == digest or slots.store.status().versions.get(Slot.A) == digest:
            return digest
        raise UpgradeRefused(f"already installed with image {running[:12]}: upgrade it instead")
    files = {f.file: source(url) for f, url in zip(manifest.files, cmd.urls, strict=True)}
    try:
        if root != Path("/"):
            install_sandbox(
                root / "system", files, slot_manifest_of(manifest), identity_dir=state_dir
            )
        else:
            installer.install(cmd.disk, files, slot_manifest_of(manifest), identity_dir=state_dir)
    except (InstallError, SlotError, OSError) as exc:
        raise UpgradeRefused(f"install to {cmd.disk or 'the disk'} failed: {exc}") from None
    log.info("installed image=%s disk=%s", digest[:12], cmd.disk or "sandbox")
    return digest


class NodeSlots:
    """The slots of an installed machine (or of a simulated one under ``--root``)."""

    def __init__(self, backend: SlotBackend, booted: Slot, state_dir: Path) -> None:
        self.store = SlotStore(backend, booted)
        self.state_dir = state_dir

    @classmethod
    def detect(cls, root: Path, state_dir: Path) -> NodeSlots | None:
        """The slots of this machine, None when it booted without them (netbooted).

        A real machine (``root`` is ``/``) booted from its disk has ``bronze.slot=`` on its
        command line (GRUB adds it) and STATE mounted at ``/system/state`` by the image's
        ``/init``: its disk is the one holding that filesystem. A simulated machine's disk is
        the sandbox ``ROOT/system``."""
        cmdline_slot = slot_from_cmdline(_read(root / "proc/cmdline"))
        if root == Path("/"):
            disk = disk_of_mount(STATE_MOUNT)
            if cmdline_slot is None or disk is None:
                return None
            return cls(BlockBackend(disk, state_mount=STATE_MOUNT), cmdline_slot, state_dir)
        system = root / "system"
        if not (system / "STATE" / "grub" / "grubenv").exists():
            return None
        backend = SandboxBackend(system)
        return cls(backend, cmdline_slot or grub_boot(backend), state_dir)

    def report(self) -> SlotReport:
        st = self.store.status()
        return SlotReport(
            image_digest=st.booted_version or "",
            slot=st.booted.value,
            last_good_digest=st.versions.get(st.last_good) or "",
        )

    def booted_args(self) -> tuple[str, ...]:
        m = self.store.manifest(self.store.booted)
        return m.kernel_args if m else ()

    # -- commands ------------------------------------------------------------------------------

    def upgrade(
        self,
        cmd: pb.Upgrade,
        keys: Sequence[TrustedKey],
        source: Source,
    ) -> str:
        """Write and arm; returns the image digest. UpgradeRefused: nothing was armed."""
        manifest = checked_manifest(cmd.manifest_json, cmd.signature, len(cmd.urls), keys)
        digest = manifest.digest()
        if self.report().image_digest == digest:
            raise UpgradeRefused(f"already running image {digest[:12]}")
        files = {f.file: source(url) for f, url in zip(manifest.files, cmd.urls, strict=True)}
        slot_manifest = slot_manifest_of(manifest)
        target = self.store.inactive()
        try:
            self.store.write_inactive(files, slot_manifest)
            self.store.arm_try(target, tries=max(1, cmd.tries or 1), preserve=cmd.preserve)
        except (InstallError, SlotError, OSError) as exc:
            raise UpgradeRefused(f"writing slot {target} failed: {exc}") from None
        write_file(
            self.state_dir / WATCHDOG_FILE,
            json.dumps({"digest": digest, "timeout": cmd.confirm_timeout_seconds}).encode(),
        )
        log.info("upgrade written slot=%s image=%s preserve=%s", target, digest[:12], cmd.preserve)
        return digest

    def mark_good(self, digest: str) -> None:
        running = self.report().image_digest
        if digest and digest != running:
            raise UpgradeRefused(f"running image {running[:12]}, not {digest[:12]}")
        try:
            self.store.confirm_good()
        except SlotError as exc:
            raise UpgradeRefused(str(exc)) from None
        (self.state_dir / WATCHDOG_FILE).unlink(missing_ok=True)

    # -- boot ------------------------------------------------------------------------------------

    def on_boot(self) -> float | None:
        """Wipe EPHEMERAL if this first boot of a new slot asked for it; returns the watchdog
        deadline (monotonic) when this boot is an unconfirmed try, else None."""
        if self.store.wipe_ephemeral_if_requested():
            log.info("EPHEMERAL wiped on the first boot of slot %s", self.store.booted)
        st = self.store.status()
        if st.last_good == st.booted:
            (self.state_dir / WATCHDOG_FILE).unlink(missing_ok=True)
            return None
        try:
            timeout = float(json.loads(_read(self.state_dir / WATCHDOG_FILE))["timeout"])
        except (ValueError, KeyError, TypeError):
            timeout = 600.0
        return time.monotonic() + max(timeout, 1.0)


def disk_of_mount(mountpoint: Path, mounts: str = "/proc/mounts") -> str | None:
    """The whole disk (``/dev/vda``) holding the filesystem mounted at ``mountpoint``, from
    the kernel's mount table and sysfs (a partition's sysfs directory sits in its disk's)."""
    for line in _read(Path(mounts)).splitlines():
        fields = line.split()
        if len(fields) > 1 and fields[1] == str(mountpoint) and fields[0].startswith("/dev/"):
            part = Path("/sys/class/block") / Path(fields[0]).name
            if (part / "partition").exists():
                return "/dev/" + part.resolve().parent.name
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
