"""The agent's real reboot path (``--reboot-command``), used by the OS image's ``/init``."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.main import _parser, run_options
from agent.runtime import Agent, AgentOptions


def _opts(tmp_path: Path, argv: list[str]) -> AgentOptions:
    args = _parser().parse_args(["run", "--root", str(tmp_path), "--server", "127.0.0.1:1", *argv])
    opts = run_options(args)
    assert isinstance(opts, AgentOptions)
    return opts


def test_option_is_split_like_a_shell_and_absent_means_simulated(tmp_path: Path) -> None:
    assert _opts(tmp_path, ["--reboot-command", "/bin/busybox reboot"]).reboot_command == (
        "/bin/busybox", "reboot",
    )  # fmt: skip
    assert _opts(tmp_path, []).reboot_command == ()


def test_real_reboot_runs_the_command_then_waits_to_be_stopped(tmp_path: Path) -> None:
    marker = tmp_path / "rebooted"
    opts = _opts(tmp_path, ["--reboot-command", f"touch {marker}"])
    agent = Agent(opts)

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent._real_reboot(False, stop))
        while not marker.exists():
            await asyncio.sleep(0.01)
        assert not task.done()  # the machine is going down: the agent waits
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(go())


def test_failed_reboot_command_returns_so_the_agent_carries_on(tmp_path: Path) -> None:
    agent = Agent(_opts(tmp_path, ["--reboot-command", "false"]))
    asyncio.run(asyncio.wait_for(agent._real_reboot(False, asyncio.Event()), 10))
