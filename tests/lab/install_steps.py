"""Steps 5 and 6 of the end-to-end stage (``test_stage.py``), on one VM (the BIOS one, with
its IPMI BMC), through bronze's CLI only:

5. ``bronze machines update --boot-from disk`` and ``bronze provision start --disk /dev/vda``:
   bronze power-cycles it into a netboot, the agent enrolls, takes its config, installs the
   image (GPT, slot A, GRUB) and reboots; SeaBIOS boots the disk (directly, or through iPXE's
   ``sanboot`` when the boot plane answers), GRUB boots slot A, ``/init`` mounts STATE and
   EPHEMERAL, and the agent reconnects with the identity it keeps in STATE: ``ready``, slot A,
   the image's digest, the same certificate (no new enrollment).
6. a config patch writes a sentinel file under ``/var`` (EPHEMERAL on the disk); ``bronze
   upgrade start --preserve`` to a second image (the same kernel and initramfs with one more
   kernel argument: another digest): the machine reboots into slot B and reports the new
   digest, and the sentinel, read back through ``bronze node NAME logs``, survived. Then a
   third image whose init exits (``rdinit=/bin/false``: the kernel panics and the machine
   hangs): the rollout's health deadline passes, the server power-cycles the machine through
   its BMC, GRUB's boot count is spent and it boots the last good slot (B, the second image);
   the machine ends ``failed`` with the reason, running the second image.

Each step's duration goes to the stage's figures (never asserted).
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from tests.support.wait import eventually

SENTINEL = "written to EPHEMERAL before the upgrade"
BROKEN_ARG = "rdinit=/bin/false"
"""The third image's init: ``/bin/false`` exits at once, the kernel panics."""


class StageLike(Protocol):
    def json(self, *args: str, timeout: float = 120) -> Any: ...
    def cli(self, *args: str, timeout: float = 120) -> Any: ...
    def diagnostics(self) -> str: ...


def _wait(what: str, stage: StageLike, check: Any, timeout: float, interval: float = 3) -> None:
    try:
        eventually(check, timeout=timeout, interval=interval)
    except AssertionError as exc:
        raise AssertionError(f"{what}: {exc}\n{stage.diagnostics()}") from None


def _one(data: Any) -> dict[str, Any]:
    """The CLI's ``-o json`` prints one object or a list of one."""
    return dict(data[0] if isinstance(data, list) else data)


def _rollout(stage: StageLike, kind: str, rid: str) -> dict[str, Any]:
    return _one(stage.json(kind, "status", rid))


def _ended(stage: StageLike, kind: str, rid: str, states: tuple[str, ...]) -> Any:
    def check() -> bool:
        r = _rollout(stage, kind, rid)
        return r["status"] in states

    return check


def _second_image(stage: StageLike, name: str, extra: str, base: dict[str, Any]) -> str:
    """An image of the same kernel and initramfs with one more argument; returns its digest."""
    args = [*base["args"], extra]
    stage.json(
        "images", "create", name, "--version", "1", "--kernel", base["kernel"]["asset"],
        *[a for f in base["initrds"] for a in ("--initrd", f["asset"])],
        *[f"--arg={a}" for a in args],
    )  # fmt: skip
    return str(_one(stage.json("images", "show", name))["digest"])


def _upgrade(
    stage: StageLike, what: str, image: str, health_timeout: int
) -> tuple[dict[str, Any], float]:
    """A rolling upgrade of the install stage's machines to ``image`` with ``--preserve``, waited
    for to its end: the rollout and the seconds it took."""
    t0 = time.monotonic()
    up = stage.json(
        "upgrade", "start", "--image", image, "-l", "stage=install", "--preserve",
        "--health-timeout", str(health_timeout),
    )  # fmt: skip
    up_id = _one(up)["id"]
    _wait(what, stage, _ended(stage, "upgrade", up_id, ("succeeded", "failed", "aborted")), 1200)
    return _rollout(stage, "upgrade", up_id), round(time.monotonic() - t0, 1)


def install_and_upgrade(stage: StageLike, name: str, lab: str, state_dir: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {"machine": name}
    base = _one(stage.json("images", "show", "lab-os"))
    cert = _one(stage.json("agent", "show", name))["certificate"]["serial"]

    # 5. provision: install to the virtual disk, back from it as ready
    t0 = time.monotonic()
    stage.json("machines", "update", name, "--boot-from", "disk", "--label", "stage=install")
    prov = stage.json(
        "provision", "start", "--image", "lab-os", "-l", f"lab={lab},stage=install",
        "--disk", "/dev/vda", "--netboot-timeout", "600", "--install-timeout", "900",
    )  # fmt: skip
    prov_id = _one(prov)["id"]
    _wait("provision", stage, _ended(stage, "provision", prov_id, ("succeeded",
          "completed_with_failures", "failed", "cancelled")), timeout=1500)  # fmt: skip
    done = _rollout(stage, "provision", prov_id)
    figures["provision_s"] = round(time.monotonic() - t0, 1)
    assert done["status"] == "succeeded", (done, stage.diagnostics())
    machine = _one(stage.json("machines", "show", name))
    agent = _one(stage.json("agent", "show", name))
    assert machine["phase"] == "ready", machine
    assert agent["os"]["slot"] == "A" and agent["os"]["image_digest"] == base["digest"], agent
    figures["reenrolled_for_install"] = agent["certificate"]["serial"] != cert
    cert = agent["certificate"]["serial"]

    # 6a. a sentinel in EPHEMERAL, then a rolling upgrade with preserve=true
    patch = state_dir / "stage-sentinel.json"
    content = {"content": SENTINEL + "\n", "mode": "0644"}
    patch.write_text(json.dumps({"files": {"/var/log/bronze/sentinel.log": content}}))
    stage.json(
        "config", "patches", "create", "lab-sentinel", "--patch-file", str(patch),
        "--scope", "selector", "-l", "stage=install",
    )  # fmt: skip

    def in_sync() -> bool:
        return bool(_one(stage.json("agent", "show", name))["config"]["in_sync"])

    _wait("sentinel", stage, in_sync, 300)
    assert stage.cli("node", name, "logs", "sentinel").stdout.strip() == SENTINEL
    good = _second_image(stage, "lab-os-2", "bronze.lab=second", base)
    done, figures["upgrade_s"] = _upgrade(stage, "upgrade", "lab-os-2", health_timeout=600)
    assert done["status"] == "succeeded", (done, stage.diagnostics())
    agent = _one(stage.json("agent", "show", name))
    assert agent["os"]["slot"] == "B" and agent["os"]["image_digest"] == good, agent
    assert agent["os"]["last_good_digest"] == good, agent
    assert agent["certificate"]["serial"] == cert, "the installed agent enrolled again"
    logs = stage.cli("node", name, "logs", "sentinel")
    assert logs.returncode == 0 and logs.stdout.strip() == SENTINEL, logs

    # 6b. a broken image: boot counting + the BMC power cycle bring back the last good one
    _second_image(stage, "lab-os-broken", BROKEN_ARG, base)
    done, figures["broken_upgrade_s"] = _upgrade(
        stage, "broken upgrade", "lab-os-broken", health_timeout=90
    )
    assert done["status"] == "failed", done

    def back_on_last_good() -> bool:
        a = _one(stage.json("agent", "show", name))
        return bool(a["connected"]) and a["os"]["image_digest"] == good

    _wait("back on the last good image", stage, back_on_last_good, 600)
    agent = _one(stage.json("agent", "show", name))
    assert agent["os"]["slot"] == "B", agent
    machine = _one(stage.json("machines", "show", name))
    figures["broken_result"] = {"phase": machine["phase"], "reason": machine.get("fault_reason")}
    assert machine["phase"] == "failed", machine
    power = [e for e in _events(stage, name) if e["kind"].startswith("power.")]
    figures["broken_power_events"] = [e["detail"].get("message") for e in power][-6:]
    figures["steps"] = _steps(stage, name)
    return figures


def _events(stage: StageLike, name: str) -> list[dict[str, Any]]:
    data = stage.json("machines", "timeline", name)
    return list(data["items"] if isinstance(data, dict) else data)


def _steps(stage: StageLike, name: str) -> list[tuple[str, str, float]]:
    """Each rollout step of the machine: (rollout kind, step, seconds it lasted), from the
    rollout events' times (the figures; a step lasts until the next event)."""
    events = [e for e in _events(stage, name) if e["kind"].startswith("rollout.machine.")]
    out = []
    for e, nxt in zip(events, events[1:], strict=False):
        d = e.get("detail") or {}
        if e["kind"] == "rollout.machine.step":
            span = _t(nxt.get("at") or nxt["time"]) - _t(e.get("at") or e["time"])
            out.append((str(d.get("kind") or "upgrade"), str(d.get("step")), round(span, 1)))
    return out


def _t(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
