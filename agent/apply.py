"""Applying a machine config on the node, idempotently, under a root directory.

The agent turns the config document into a set of *managed files* and writes exactly those:

=====================  ================================================================
``hostname``           ``/etc/hostname``
``files``              each path, with its mode
``sysctls``            ``/etc/sysctl.d/90-bronze.conf`` and the live ``/proc/sys/...`` value
``network.links``      ``/etc/systemd/network/50-bronze-<link>.network`` (systemd.network)
``network.routes``     ``[Route]`` sections of the link's file (``/etc/bronze/routes`` if none)
``network.dns``        ``/etc/resolv.conf``
``time.servers``       ``/etc/chrony/sources.d/bronze.sources``
``kernel_args``        ``STATE/boot/kernel-args`` (read by the boot loader: needs a reboot)
``install, volumes``   ``STATE/boot/install.json`` (done by the installer at boot: needs a reboot)
=====================  ================================================================

Applying is idempotent: a file whose content and mode already match is not rewritten, files the
previous config managed and the new one does not are removed, and applying the version already in
effect is a no-op. It is all or nothing: a write that fails puts back what the apply had changed
before it (``ConfigApplier.apply_live``). Every write is atomic (temp file + rename), and every
path is checked to stay inside the root (no ``..``, no symlinked parent leading out). In this
sandbox "the node" is the ``--root`` tree; nothing outside it is touched.

State (``STATE`` = the agent's state directory): ``config.json`` (the config in effect),
``staged.json`` (applied at next boot), ``try.json`` (a ``try`` apply awaiting confirmation, with
the config to revert to), ``manifest.json`` (managed files), ``applies.log`` (one line per real
application, for audits and tests).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.identity import write_file

# Must match server.config.model.REBOOT_FIELDS (the agent does not import the server).
REBOOT_FIELDS = ("kernel_args", "install", "volumes")

log = logging.getLogger(__name__)


class ApplyError(Exception):
    """A config could not be applied (reported as a failed CommandResult)."""


@dataclass(frozen=True)
class ManagedFile:
    data: bytes
    mode: int


def reboot_needed(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    old = old or {}
    return [f for f in REBOOT_FIELDS if old.get(f) != new.get(f)]


def render_files(cfg: dict[str, Any], state_rel: str) -> dict[str, ManagedFile]:
    """The files (absolute paths on the node) a config makes true."""
    out: dict[str, ManagedFile] = {}
    if cfg.get("hostname"):
        out["/etc/hostname"] = ManagedFile(f"{cfg['hostname']}\n".encode(), 0o644)
    for path, f in sorted((cfg.get("files") or {}).items()):
        out[path] = ManagedFile(str(f.get("content", "")).encode(), int(f.get("mode", 0o644)))
    sysctls = cfg.get("sysctls") or {}
    if sysctls:
        body = "".join(f"{k} = {v}\n" for k, v in sorted(sysctls.items()))
        out["/etc/sysctl.d/90-bronze.conf"] = ManagedFile(body.encode(), 0o644)
        for k, v in sysctls.items():
            out["/proc/sys/" + k.replace(".", "/")] = ManagedFile(f"{v}\n".encode(), 0o644)
    net = cfg.get("network") or {}
    links = net.get("links") or {}
    routes = net.get("routes") or []
    leftover = [r for r in routes if r.get("link") not in links]
    for name, link in sorted(links.items()):
        lines = ["[Match]", f"MACAddress={link['mac']}" if link.get("mac") else f"Name={name}"]
        if link.get("mtu"):
            lines += ["", "[Link]", f"MTUBytes={link['mtu']}"]
        lines += ["", "[Network]", f"DHCP={'yes' if link.get('dhcp') else 'no'}"]
        lines += [f"Address={a}" for a in link.get("addresses") or []]
        for r in routes:
            if r.get("link") == name:
                lines += ["", "[Route]", f"Destination={_dest(r)}"]
                lines += [f"Gateway={r['via']}"] if r.get("via") else []
                lines += [f"Metric={r.get('metric', 1024)}"]
        out[f"/etc/systemd/network/50-bronze-{name}.network"] = ManagedFile(
            ("\n".join(lines) + "\n").encode(), 0o644
        )
    if leftover:
        body = "".join(
            f"{_dest(r)} via {r.get('via', '-')} metric {r.get('metric', 1024)}\n" for r in leftover
        )
        out["/etc/bronze/routes"] = ManagedFile(body.encode(), 0o644)
    dns = net.get("dns") or {}
    if dns.get("nameservers") or dns.get("search"):
        body = "".join(f"nameserver {ns}\n" for ns in dns.get("nameservers") or [])
        if dns.get("search"):
            body += "search " + " ".join(dns["search"]) + "\n"
        out["/etc/resolv.conf"] = ManagedFile(body.encode(), 0o644)
    servers = (cfg.get("time") or {}).get("servers") or []
    if servers:
        body = "".join(f"server {s} iburst\n" for s in servers)
        out["/etc/chrony/sources.d/bronze.sources"] = ManagedFile(body.encode(), 0o644)
    if cfg.get("kernel_args"):
        out[f"{state_rel}/boot/kernel-args"] = ManagedFile(
            (" ".join(cfg["kernel_args"]) + "\n").encode(), 0o644
        )
    if cfg.get("install") or cfg.get("volumes"):
        plan = {"install": cfg.get("install"), "volumes": cfg.get("volumes") or {}}
        out[f"{state_rel}/boot/install.json"] = ManagedFile(
            json.dumps(plan, sort_keys=True, indent=2).encode(), 0o600
        )
    return out


def _dest(route: dict[str, Any]) -> str:
    to = str(route.get("to", "default"))
    return "0.0.0.0/0" if to == "default" else to  # noqa: S104 - a route, not a bind


class ConfigApplier:
    def __init__(self, root: Path, state_dir: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.state = state_dir
        self._fsync = fsync
        self._root_real = os.path.realpath(root)
        try:
            rel = state_dir.resolve().relative_to(root.resolve())
            self._state_rel = "/" + str(rel)
        except ValueError:
            self._state_rel = "/var/lib/bronze"
        self.state.mkdir(parents=True, exist_ok=True)

    # -- state ------------------------------------------------------------------------------------

    def _load(self, name: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.state / name).read_text())
            return data
        except (OSError, ValueError):
            return None

    def _save(self, name: str, doc: dict[str, Any] | None) -> None:
        if doc is None:
            (self.state / name).unlink(missing_ok=True)
        else:
            write_file(
                self.state / name,
                json.dumps(doc, sort_keys=True).encode(),
                0o600,
                fsync=self._fsync,
            )

    @property
    def current(self) -> dict[str, Any] | None:
        return self._load("config.json")

    @property
    def current_version(self) -> str:
        return (self.current or {}).get("version", "")

    @property
    def staged_version(self) -> str:
        return (self._load("staged.json") or {}).get("version", "")

    @property
    def trial(self) -> dict[str, Any] | None:
        return self._load("try.json")

    @property
    def reverted_version(self) -> str:
        """The last ``try`` version reverted for want of a confirmation ("" after any apply)."""
        return (self._load("reverted.json") or {}).get("version", "")

    # -- operations -------------------------------------------------------------------------------

    def apply_live(self, version: str, cfg: dict[str, Any], mode: str) -> None:
        """Make ``cfg`` true now (no reboot). All or nothing: a write that fails half-way (a
        path refused, a sysctl the kernel does not take, a full disk) puts back every file and
        live value this apply had changed, in reverse order, before the error is raised."""
        files = render_files(cfg, self._state_rel)
        old_doc = self._load("manifest.json") or {}
        old_manifest = set(old_doc.get("files", []))
        undo: list[_Undo] = []
        try:
            for path, mf in files.items():
                self._write_managed(path, mf, undo)
            for path in sorted(old_manifest - set(files)):
                if not path.startswith("/proc/"):
                    target = self._target(path)
                    undo.append(_Undo.of(target))
                    target.unlink(missing_ok=True)
        except Exception:
            self._roll_back(undo)
            raise
        manifest = {"files": sorted(files)}
        if old_doc != manifest:  # a new version of the same files (the usual case) keeps it
            self._save("manifest.json", manifest)
        self._save("config.json", {"version": version, "config": cfg})
        if mode != "revert":
            self._save("reverted.json", None)
        with open(self.state / "applies.log", "a") as log:
            log.write(f"{time.time():.3f} {version} {mode}\n")

    def stage(self, version: str, cfg: dict[str, Any]) -> None:
        self._save("staged.json", {"version": version, "config": cfg})

    def begin_try(
        self, version: str, cfg: dict[str, Any], timeout: float, previous: dict[str, Any] | None
    ) -> None:
        """Apply now; remember ``previous`` (the confirmed config) to revert to.

        The revert plan is saved first: an agent that dies halfway through the apply still
        reverts at its next start instead of keeping an unconfirmed config for good."""
        self._save(
            "try.json",
            {"version": version, "deadline": time.time() + timeout, "previous": previous},
        )
        self.apply_live(version, cfg, "try")

    def confirm(self, version: str) -> bool:
        trial = self.trial
        if trial is None:
            return self.current_version == version
        if trial["version"] != version:
            return False
        self._save("try.json", None)
        return True

    def revert_try(self) -> str:
        """Undo an unconfirmed ``try``; returns the version now in effect."""
        trial = self.trial
        if trial is None:
            return self.current_version
        prev = trial.get("previous")
        if prev:
            self.apply_live(prev["version"], prev["config"], "revert")
        else:
            self.apply_live("", {}, "revert")
            self._save("config.json", None)
        self._save("try.json", None)
        self._save("reverted.json", {"version": trial["version"]})
        return self.current_version

    def on_boot(self) -> None:
        """At (simulated) boot: an unconfirmed try is reverted, a staged config takes effect."""
        if self.trial is not None:
            self.revert_try()
        staged = self._load("staged.json")
        if staged is not None:
            self.apply_live(staged["version"], staged["config"], "boot")
            self._save("staged.json", None)

    def wipe(self) -> None:
        for name in ("config.json", "staged.json", "try.json", "manifest.json", "reverted.json"):
            (self.state / name).unlink(missing_ok=True)

    # -- files ------------------------------------------------------------------------------------

    def _target(self, path: str) -> Path:
        if not path.startswith("/") or ".." in path.split("/"):
            raise ApplyError(f"refusing path {path!r}")
        return self.root / path.lstrip("/")

    def _make_parent(self, path: str, target: Path) -> None:
        """Create the target's parent directories; refuse a parent that leads outside the root.

        The common case walks the components below the root with one ``lstat`` each, making the
        missing ones: when none is a symlink the parent is the root's real path plus them, inside
        the root by construction. Anything else (a symlink, a file in the way) takes the general
        path: create through the links, then compare the parent's ``realpath`` with the root."""
        cur = self._root_real
        for name in path.split("/")[1:-1]:
            if name in ("", "."):
                continue
            cur = os.path.join(cur, name)
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                try:
                    os.mkdir(cur)
                    continue
                except OSError:  # made meanwhile, or the parent is not a directory
                    break
            if not stat.S_ISDIR(st.st_mode):
                break
        else:
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        parent_real = os.path.realpath(target.parent)
        if os.path.commonpath([parent_real, self._root_real]) != self._root_real:
            raise ApplyError(f"{path}: parent directory leads outside the root")

    def _roll_back(self, undo: list[_Undo]) -> None:
        for u in reversed(undo):
            try:
                u.restore(self._fsync)
            except OSError as exc:  # the apply's own error is the one reported
                log.error("rollback of %s failed: %s", u.target, exc)

    def _write_managed(self, path: str, mf: ManagedFile, undo: list[_Undo]) -> None:
        """Write one file, first noting in ``undo`` how to put back what it replaces."""
        target = self._target(path)
        self._make_parent(path, target)
        if path.startswith("/proc/") and target.exists():
            # procfs (sysctls): no temp file can be created there, so no rename; the value is
            # written in place, as sysctl(8) does (the lab's real kernel refused the temp file)
            held = target.read_bytes()
            if held.split() != mf.data.split():
                undo.append(_Undo(target, held, live=True))
                with open(target, "wb", buffering=0) as fh:
                    fh.write(mf.data)
                held = target.read_bytes()
                if held.split() != mf.data.split():  # clamped or partly done (nr_hugepages)
                    raise ApplyError(
                        f"{path}: the kernel holds {held.decode(errors='replace').strip()!r}"
                        f" after writing {mf.data.decode(errors='replace').strip()!r}"
                    )
            return
        before = _Undo.of(target)
        if before.data == mf.data and before.mode == mf.mode:
            return
        undo.append(before)
        write_file(target, mf.data, mf.mode, fsync=self._fsync)


@dataclass(frozen=True)
class _Undo:
    """How to put one path back as it was before an apply touched it."""

    target: Path
    data: bytes | None
    """Its content; None: there was no regular file (nothing, or a symlink: ``link``)."""
    mode: int = 0
    link: str | None = None
    live: bool = False
    """A /proc/sys value: written back in place."""

    @classmethod
    def of(cls, target: Path) -> _Undo:
        try:
            st = os.lstat(target)
        except OSError:
            return cls(target, None)
        if stat.S_ISLNK(st.st_mode):
            return cls(target, None, link=os.readlink(target))
        if not stat.S_ISREG(st.st_mode):
            return cls(target, None)  # a directory in the way: the write fails, nothing to undo
        return cls(target, target.read_bytes(), st.st_mode & 0o7777)

    def restore(self, fsync: bool) -> None:
        if self.live:
            with open(self.target, "wb", buffering=0) as fh:
                fh.write(self.data or b"")
            return
        if self.data is not None:
            write_file(self.target, self.data, self.mode, fsync=fsync)
            return
        self.target.unlink(missing_ok=True)
        if self.link is not None:
            os.symlink(self.link, self.target)
