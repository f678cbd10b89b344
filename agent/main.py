"""``bronze-agent``: the node agent's command line.

* ``bronze-agent run --root DIR``      — be the agent of the machine whose filesystem is at DIR
  (``/`` on a real node; a sandbox tree in tests). Boot parameters come from DIR/proc/cmdline
  (``bronze.machine``, ``bronze.token``, ``bronze.server``, ``bronze.enroll``, ``bronze.ca``);
  flags override them. The bootstrap token never comes from argv: ``--token-file FILE`` or
  ``BRONZE_AGENT_TOKEN`` override ``bronze.token=``.
* ``bronze-agent simulate --count N --root-template DIR --work DIR --tokens FILE ...`` — N
  simulated machines in one process (see :mod:`agent.simulate`).
* ``bronze-agent inventory --root DIR`` — print the inventory as JSON.

Reboots are simulated (a new boot id, the session restarts) unless ``--reboot-command CMD`` is
given: then the agent runs CMD (the OS image's ``/init`` passes ``busybox reboot``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import signal
import sys
from pathlib import Path

from agent.identity import load_endpoints, read_boot_params, save_endpoints
from agent.image_manifest import ManifestError, TrustedKey, parse_keys
from agent.inventory import collect
from agent.runtime import Agent, AgentFatalError, AgentOptions

TOKEN_ENV = "BRONZE_AGENT_TOKEN"  # noqa: S105 - a variable name, not a secret
"""Environment variable with the bootstrap token (argv is visible to every user in ps)."""


def bootstrap_token(token_file: Path | None, env: dict[str, str], cmdline: str) -> str:
    """The bootstrap token: ``--token-file``, then ``BRONZE_AGENT_TOKEN``, then the kernel
    command line's ``bronze.token=`` (how a network boot passes it). Raises ``OSError`` when
    the file cannot be read."""
    if token_file is not None:
        return token_file.read_text().strip()
    return env.get(TOKEN_ENV, "").strip() or cmdline


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    """The options of ``bronze-agent run`` (also used by the test harness, which adds its
    fault-injection flags: those are not part of the shipped command)."""
    run.add_argument("--root", type=Path, default=Path("/"))
    run.add_argument("--state", type=Path, help="state dir (default ROOT/var/lib/bronze)")
    run.add_argument("--server", help="session endpoint HOST:PORT (bronze.server=)")
    run.add_argument("--enroll", help="enrollment endpoint HOST:PORT (bronze.enroll=)")
    run.add_argument("--machine", help="machine id (bronze.machine=)")
    run.add_argument(
        "--token-file",
        type=Path,
        help=f"file with the bootstrap token (else {TOKEN_ENV}, else bronze.token=)",
    )
    run.add_argument("--token", help=argparse.SUPPRESS)  # refused: argv is readable by all
    run.add_argument("--ca", type=Path, help="fleet CA PEM (default ROOT + bronze.ca=)")
    run.add_argument("--server-name", help="TLS name to verify instead of the dialled host")
    run.add_argument("--heartbeat", type=float, default=30.0, help="seconds between heartbeats")
    run.add_argument("--backoff-max", type=float, default=30.0)
    run.add_argument("--no-fsync", action="store_true")
    run.add_argument(
        "--reboot-command",
        help="command that really reboots this machine (the OS image's /init passes "
        "'busybox reboot'); without it reboots are simulated",
    )
    run.add_argument(
        "--trusted-keys",
        type=Path,
        help="file of Ed25519 keys (ed25519:BASE64, one a line) OS images must be signed with",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bronze-agent", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="cmd")
    add_run_arguments(sub.add_parser("run", help="run the agent"))

    sim = sub.add_parser("simulate", help="simulate many machines in one process")
    sim.add_argument("--count", type=int, required=True)
    sim.add_argument("--root-template", type=Path, required=True)
    sim.add_argument("--work", type=Path, required=True, help="where per-machine roots go")
    sim.add_argument("--server", required=True)
    sim.add_argument("--enroll", required=True)
    sim.add_argument("--ca", type=Path, required=True)
    sim.add_argument("--tokens", type=Path, required=True, help='JSON {"machine": "token"}')
    sim.add_argument("--heartbeat", type=float, default=30.0)
    sim.add_argument("--ramp", type=float, default=5.0, help="spread starts over this many s")
    sim.add_argument("--backoff-max", type=float, default=30.0, help="reconnect backoff cap")
    sim.add_argument(
        "--reboot-seconds",
        type=float,
        default=0.0,
        help="a reboot takes this long from the command asking for it (its slot write included)",
    )
    sim.add_argument("--trusted-keys", type=Path, help="image signing keys every machine trusts")
    sim.add_argument("--installed", type=Path, help="image dir (manifest.json + files): slot A")
    sim.add_argument("--power-events", type=Path, help="a simulated BMC's event log")
    sim.add_argument("--bmc-ports", type=Path, help='JSON {"machine": BMC port}')
    sim.add_argument(
        "--netboot", help="diskless: every boot fetches URL/boot.ipxe and boots what it names"
    )
    sim.add_argument("--netboot-macs", type=Path, help='JSON {"machine": MAC} for --netboot')
    sim.add_argument(
        "--redfish-systems", type=Path, help='JSON {"machine": Redfish system URL} (sushy)'
    )
    sim.add_argument(
        "--powered-off",
        action="store_true",
        help="machines with a BMC start off until it powers them on",
    )

    inv = sub.add_parser("inventory", help="print this machine's inventory")
    inv.add_argument("--root", type=Path, default=Path("/"))
    return p


async def _run_until_signal(coro_factory) -> None:  # type: ignore[no-untyped-def]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await coro_factory(stop)


def run_options(args: argparse.Namespace) -> AgentOptions | int:
    """AgentOptions from ``run``'s arguments, or an exit status after printing why not."""
    if args.token is not None:
        print(
            "bronze-agent: tokens are never taken from argv (other users can read it in ps); "
            f"use --token-file or {TOKEN_ENV}",
            file=sys.stderr,
        )
        return 2
    root: Path = args.root
    bp = read_boot_params(root)
    try:
        token = bootstrap_token(args.token_file, dict(os.environ), bp.token)
    except OSError as exc:
        print(f"bronze-agent: cannot read {args.token_file}: {exc.strerror}", file=sys.stderr)
        return 2
    ca_path = args.ca or (root / bp.ca_path.lstrip("/"))
    try:
        ca_pem = ca_path.read_bytes()
    except OSError:
        ca_pem = None
    state_dir = args.state or (root / "var/lib/bronze")
    saved = load_endpoints(state_dir)
    server = args.server or bp.server or saved.get("server", "")
    if not server:
        print("bronze-agent: no server (bronze.server= or --server)", file=sys.stderr)
        return 2
    opts = AgentOptions(
        root=root,
        state_dir=state_dir,
        machine_id=args.machine or bp.machine_id or saved.get("machine", ""),
        token=token,
        server=server,
        enroll=args.enroll or bp.enroll or saved.get("enroll", ""),
        ca_pem=ca_pem,
        heartbeat_interval=args.heartbeat,
        backoff_max=args.backoff_max,
        fsync=not args.no_fsync,
        server_name=args.server_name,
        reboot_command=tuple(shlex.split(args.reboot_command or "")),
    )
    try:
        opts.trusted_keys = _trusted_keys(args.trusted_keys, root)
    except (ManifestError, OSError) as exc:
        print(f"bronze-agent: trusted keys: {exc}", file=sys.stderr)
        return 2
    return opts


def _trusted_keys(path: Path | None, root: Path) -> tuple[TrustedKey, ...]:
    """``--trusted-keys``, else ROOT/etc/bronze/image-keys when the OS image ships one."""
    path = path or root / "etc/bronze/image-keys"
    try:
        return parse_keys(path.read_text().splitlines())
    except FileNotFoundError:
        return ()


def run_agent(opts: AgentOptions) -> int:
    agent = Agent(opts)
    save_endpoints(
        opts.state_dir,
        server=opts.server,
        enroll=opts.enroll,
        machine=opts.machine_id,
        fsync=opts.fsync,
    )
    try:
        asyncio.run(_run_until_signal(agent.run))
    except AgentFatalError as exc:
        print(f"bronze-agent: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from agent.simulate import load_tokens, simulate

    tokens = load_tokens(args.tokens)
    ca_pem = args.ca.read_bytes()

    async def go(stop: asyncio.Event) -> None:
        await simulate(
            count=args.count,
            template=args.root_template,
            work=args.work,
            server=args.server,
            enroll=args.enroll,
            ca_pem=ca_pem,
            tokens=tokens,
            heartbeat_interval=args.heartbeat,
            ramp_seconds=args.ramp,
            stop=stop,
            installed=args.installed,
            backoff_max=args.backoff_max,
            reboot_seconds=args.reboot_seconds,
            trusted_keys=_trusted_keys(args.trusted_keys, Path("/nonexistent")),
            power_events=args.power_events,
            bmc_ports=json.loads(args.bmc_ports.read_text()) if args.bmc_ports else None,
            netboot_url=args.netboot or "",
            netboot_macs=json.loads(args.netboot_macs.read_text()) if args.netboot_macs else None,
            powered_off=args.powered_off,
            redfish_systems=(
                json.loads(args.redfish_systems.read_text()) if args.redfish_systems else None
            ),
        )

    asyncio.run(_run_until_signal(go))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.WARNING
    if args.cmd == "run" or args.verbose:
        level = logging.INFO if args.verbose < 2 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.cmd == "simulate":
        return _cmd_simulate(args)
    if args.cmd == "inventory":
        print(json.dumps(collect(args.root).to_dict(), indent=2))
        return 0
    if args.cmd == "run":
        opts = run_options(args)
        return opts if isinstance(opts, int) else run_agent(opts)
    _parser().print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
