"""A unique password must never surface: not in logs (DEBUG, every library), exception
messages or tracebacks, reprs, or the argv of any process (ours or the peers')."""

from __future__ import annotations

import logging
import os
import subprocess
import traceback
import uuid
from pathlib import Path

import pytest

from bmc import (
    BmcController,
    BmcEndpoint,
    BootDevice,
    DriverKind,
    DriverTimeouts,
    PowerAction,
)
from bmc.actions import default_driver_factory
from tests.peers import bmc_peers as peers
from tests.support.bmc import FAST, endpoint_for, start_peer


def all_cmdlines() -> list[bytes]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            except OSError:
                continue
    return out


def test_canary_password_never_leaks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = f"CANARY-{uuid.uuid4().hex[:12]}"
    spawned: list[list[str]] = []
    real_popen = subprocess.Popen

    class RecordingPopen(real_popen):  # type: ignore[misc,valid-type]
        def __init__(self, args, *a, **kw):  # type: ignore[no-untyped-def]
            spawned.append([str(x) for x in args])
            super().__init__(args, *a, **kw)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    caplog.set_level(logging.DEBUG)

    seen_text: list[str] = []
    cmdlines: list[bytes] = []
    ctl = BmcController(default_driver_factory(DriverTimeouts(connect=0.5, read=1)), FAST)
    running = []
    try:
        for name in ("sushy-tls", "ipmi_sim", "pyghmi"):
            peer = start_peer(name, tmp_path / name, password=canary)
            running.append(peer)
            good = endpoint_for(peer)
            bad = endpoint_for(peer, password=canary + "-wrong")
            auto = endpoint_for(peer, driver=DriverKind.auto)
            results = [
                ctl.get_power_state_sync(good),
                ctl.power_sync(good, PowerAction.on),
                ctl.power_sync(good, PowerAction.cycle),
                ctl.set_boot_device_sync(good, BootDevice.pxe, persistent=True),
                ctl.get_power_state_sync(auto),
                ctl.get_power_state_sync(bad),
                ctl.power_sync(bad, PowerAction.off),
            ]
            assert all(r.ok for r in results[:5]), [r.error for r in results[:5]]
            assert not results[5].ok and not results[6].ok
            if peer.kind == "ipmi":
                peers.reference_power(peer)  # ipmitool, password via IPMI_PASSWORD
            cmdlines += all_cmdlines()
            for ep in (good, bad, auto):
                seen_text += [repr(ep), str(ep), f"{ep}", f"{ep.password}", repr(ep.password)]
            for r in results:
                seen_text.append(repr(r))
                if r.error is not None:
                    seen_text.append(str(r.error))
                    seen_text.append(repr(r.error.fields))
                    seen_text += traceback.format_exception(r.error)
        # failing transports with the canary as password
        with peers.udp_black_hole() as port:
            r = ctl.get_power_state_sync(
                BmcEndpoint(DriverKind.ipmi, "127.0.0.1", port, "admin", canary)
            )
            seen_text += [repr(r), str(r.error), *traceback.format_exception(r.error)]
        with peers.tcp_silent() as port:
            r = ctl.get_power_state_sync(
                BmcEndpoint(DriverKind.redfish, "127.0.0.1", port, "admin", canary, scheme="http")
            )
            seen_text += [repr(r), str(r.error), *traceback.format_exception(r.error)]
        with peers.redirect_pair() as (src, _dst, _seen):
            r = ctl.get_power_state_sync(
                BmcEndpoint(DriverKind.redfish, "127.0.0.1", src, "admin", canary, scheme="http")
            )
            seen_text += [repr(r), str(r.error), *traceback.format_exception(r.error)]
    finally:
        for p in running:
            p.stop()
        ctl.close()

    assert len(caplog.records) > 50  # DEBUG logging really was on
    for rec in caplog.records:
        assert canary not in rec.getMessage(), rec.name
        assert canary not in repr(rec.args), rec.name
        if rec.exc_info:
            assert canary not in "".join(traceback.format_exception(*rec.exc_info))
    assert canary not in caplog.text
    for text in seen_text:
        assert canary not in text
    assert spawned, "peers were spawned through subprocess.Popen"
    for argv in spawned:
        assert not any(canary in a for a in argv), argv
    for cmdline in cmdlines:
        assert canary.encode() not in cmdline
