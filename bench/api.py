"""API benchmark (issues 15 and 16). Not a test: prints a table.

Seeds labelled machines (racks of 40, 4 roles, 3 zones, two labels unique to each machine, one
in ten in maintenance; two events each) at each fleet size given, then measures with wrk
(server pinned to CPU 0, wrk to CPU 1), with the read cache off (BRONZE_API_CACHE_MB=0: every
request reads the database): a broad filtered page, a one-rack page, a page sorted by
-updated_at, the event list and one event group, one machine; and a random machine with the
cache on. On SQLite and PostgreSQL, beside a bare FastAPI endpoint returning the filtered page's
body (the framework ceiling), with the p99 ratio of the largest fleet to the smallest. All fleet
sizes are seeded first and served at once; each figure is the median of --rounds interleaved wrk
runs (sizes in order, then reversed), so a load that drifts falls on every size alike.
Targets: filtered-page p99 <= 50 ms, one random machine p99 <= 20 ms (issue 15); every list
within 1.2x of its figure at 10,000 machines (issue 16).

    .venv/bin/python -m bench.api [--machines 10000,100000] [--duration 10] [--connections 16]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import create_engine, insert, text

from bench.profile import Sampler
from server.inventory import listview, migrate
from server.inventory.db import Database
from server.inventory.models import Event, Machine, MachineLabel, Nic
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[1]

SELECTOR = "role in (worker,storage),zone=z1,!maintenance"
"""A broad selector (15 % of the fleet): its page walks the name index."""
RACK = "rack=r0007,!maintenance"
"""A narrow one (36 machines of one rack): its page starts from the rack's label rows."""
PG = os.environ.get("BRONZE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def fleet_mac(i: int) -> str:
    """Machine ``i``'s MAC in the seeded fleets (this bench and the query-plan test)."""
    return ":".join(f"{b:02x}" for b in (2, 0, 0, i >> 16 & 255, i >> 8 & 255, i & 255))


def fleet_labels(i: int) -> dict[str, str]:
    """Machine ``i``'s labels, a realistic cardinality: a rack holds 40 machines, 4 roles,
    3 zones, 2 labels unique to the machine, every 10th in maintenance. The query-plan test
    (tests/server/inventory/test_list_plans.py) seeds the same shape, so the plans it checks are
    the plans this bench measures."""
    lab = {
        "rack": f"r{i // 40:04d}",
        "role": ("worker", "storage", "control", "gpu")[i % 4],
        "zone": f"z{i % 3}",
        "asset": f"a{i:06d}",
        "example.com/serial": f"sn{i * 7919 % 1_000_003:07d}",
    }
    if i % 10 == 0:
        lab["maintenance"] = ""
    return lab


def seed(url: str, n: int) -> None:
    migrate.upgrade(url)
    engine = create_engine(url)
    now = datetime.now(UTC)
    machines: list[dict] = []
    nics: list[dict] = []
    labels: list[dict] = []
    events: list[dict] = []
    for i in range(n):
        mid = str(uuid.UUID(int=i + 1))
        machines.append(
            dict(
                id=mid,
                name=f"node-{i:05d}",
                phase="ready",
                power_observed="on",
                bmc_verify_tls=True,
                hardware={"cpus": 64, "memory_gib": 512},
                created_at=now,
                updated_at=now,
                revision=1,
                smbios_uuid=None,
            )
        )
        nics.append(dict(machine_id=mid, mac=fleet_mac(i)))
        labels += [dict(machine_id=mid, key=k, value=v) for k, v in fleet_labels(i).items()]
        events += [
            dict(
                created_at=now,
                machine_id=mid,
                machine_name=f"node-{i:05d}",
                actor="bench",
                kind=kind,
                message="seeded",
                data={},
            )
            for kind in ("machine.created", "power.changed")
        ]
    with engine.begin() as conn:
        for table, rows in (
            (Machine.__table__, machines),
            (Nic.__table__, nics),
            (MachineLabel.__table__, labels),
            (Event.__table__, events),
        ):
            for j in range(0, len(rows), 2000):
                conn.execute(insert(table), rows[j : j + 2000])
    db = Database.connect(url)  # render the views the bulk load left stale, as the server would
    try:
        listview.heal(db, batch=2000)
    finally:
        db.dispose()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE"))
    engine.dispose()


def wait_up(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("server did not come up")


def wrk(
    url: str, path: str, token: str, duration: int, conns: int, tmp: Path, random_names: int = 0
) -> dict[str, float]:
    """``random_names``: each request asks for a random one of node-00000 .. node-{n-1}."""
    script = tmp / "auth.lua"
    lua = f'wrk.headers["Authorization"] = "Bearer {token}"\n'  # keeps the token off argv
    if random_names:
        lua += (
            "request = function()\n"
            '  return wrk.format(nil, string.format("/api/v1/machines/node-%05d", '
            f"math.random(0, {random_names - 1})))\n"
            "end\n"
        )
    script.write_text(lua)
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(script),
            url + path,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def lat(label: str) -> float:
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{path}: {non2xx.group(1)} error responses\n{out}")
    return {"p50": lat("50%"), "p99": lat("99%"), "rps": rps}


def serve(env: dict[str, str], tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, **env, "BRONZE_API_PORT": str(port), "BRONZE_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(
        ["taskset", "-c", "0", str(Path(sys.executable).with_name("bronze")), "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_up(url, proc)
    return proc, url


def ceiling_app(tmp: Path, body: bytes, name: str) -> Path:
    (tmp / f"{name}.json").write_bytes(body)
    mod = tmp / f"{name}_app.py"
    mod.write_text(
        textwrap.dedent(f"""
        import json
        from fastapi import FastAPI
        app = FastAPI()
        PAYLOAD = json.loads(open({str(tmp / f"{name}.json")!r}).read())
        @app.get("/x")
        def x() -> dict:
            return PAYLOAD
    """)
    )
    return mod


REQUESTS = (
    # (label, path, cache modes it is measured in, random names)
    (
        "filtered page (100)",
        "/api/v1/machines?" + str(httpx.QueryParams({"selector": SELECTOR, "limit": 100})),
        ("0",),
        0,
    ),
    (
        "rack page (36)",
        "/api/v1/machines?" + str(httpx.QueryParams({"selector": RACK, "limit": 100})),
        ("0",),
        0,
    ),
    ("page by -updated_at", "/api/v1/machines?limit=100&sort=-updated_at", ("0",), 0),
    ("events (100)", "/api/v1/events?limit=100", ("0",), 0),
    ("events, group power (100)", "/api/v1/events?limit=100&kind=power", ("0",), 0),
    ("one machine", "/api/v1/machines/node-00042", ("0",), 0),
    ("one machine, random", "/", ("0", "64"), -1),
)
"""Every list the inventory serves, cold (``BRONZE_API_CACHE_MB=0``), and one random machine
cold and with the cache on (issue 15's row 2). With the cache on, 64 MiB hold every machine of
10,000 after the first seconds of the first round, so that figure is mostly warm at 10,000; the
cold one is what every read after a write pays."""


def measure(name: str, urls: dict[int, str], args: argparse.Namespace, tmp: Path) -> list[tuple]:
    """Every request against one server per fleet size (all up at once, all on CPU 0, only one
    under load at a time), interleaved: round r runs the sizes in order, round r+1 in reverse,
    and each figure is the median of its rounds. A load that drifts during the run (other work
    on the machine) then falls on both sizes alike, so the ratio between them stays fair."""
    rows: list[tuple] = []
    for cache_mb in ("0", "64"):
        token = "brz_" + uuid.uuid4().hex + uuid.uuid4().hex[:11]
        servers: dict[int, tuple[subprocess.Popen, str]] = {}
        try:
            for n, url in urls.items():
                servers[n] = serve(
                    {
                        "BRONZE_DATA_DIR": str(tmp / f"{name}-{n}"),
                        "BRONZE_DATABASE_URL": url,
                        "BRONZE_ADMIN_TOKEN": token,
                        "BRONZE_API_CACHE_MB": cache_mb,
                    },
                    tmp,
                )
            h = {"Authorization": f"Bearer {token}"}
            for label, path, caches, random_names in REQUESTS:
                if cache_mb not in caches or not any(o in label for o in args.only.split(",")):
                    continue
                runs: dict[int, list[dict[str, float]]] = {n: [] for n in urls}
                for _, base in servers.values():
                    if random_names == 0:
                        r = httpx.get(base + path, headers=h, timeout=120)
                        assert r.status_code == 200, r.text[:200]
                        if path.startswith("/api/v1/machines?"):
                            assert r.json()["items"], path
                        BODIES.setdefault(label, r.content)
                order = list(urls)
                for rnd in range(args.rounds):
                    for n in order if rnd % 2 == 0 else order[::-1]:
                        base = servers[n][1]
                        names = n if random_names else 0
                        slug = re.sub(r"\W+", "-", f"{name}-cache{cache_mb}-{label}-{n}").strip("-")
                        where = args.profile / f"{slug}.txt" if args.profile and rnd == 0 else None
                        with Sampler(servers[n][0].pid, where):
                            runs[n].append(
                                wrk(base, path, token, args.duration, args.connections, tmp, names)
                            )
                backend = name + ("" if cache_mb == "0" else ", cache on")
                for n in urls:
                    res = {k: statistics.median(r[k] for r in runs[n]) for k in runs[n][0]}
                    rows.append((backend, label, n, res))
                    print(f"{n} {backend}: {label}: {res}", file=sys.stderr)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(10)
    return rows


BODIES: dict[str, bytes] = {}


def ceiling(body: bytes, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    mod = ceiling_app(tmp, body, "page")
    port = free_port()
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "uvicorn", "--app-dir", str(tmp)]
    cmd += [f"{mod.stem}:app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(base + "/x", timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    try:
        return wrk(base, "/x", "none", args.duration, args.connections, tmp)
    finally:
        proc.terminate()
        proc.wait(10)


def report(
    rows: list[tuple], sizes: list[int], top: dict[str, float], args: argparse.Namespace
) -> None:
    """The table: each request's p50/p99 and req/s at every fleet size, and the p99 ratio of the
    largest fleet to the smallest, under the framework ceiling's figure."""
    print(
        f"\nwrk -c{args.connections} {args.duration}s x {args.rounds} interleaved rounds (median), "
        f"servers on CPU 0, wrk on CPU 1; "
        f"load {os.getloadavg()[0]:.2f}"
    )
    print(
        f"bare FastAPI, the first request's body: p50 {top['p50']:.2f} ms, "
        f"p99 {top['p99']:.2f} ms, {top['rps']:.0f} req/s"
    )
    head = "".join(f"{f'{n:,} p50/p99 ms':>22}{'req/s':>8}" for n in sizes)
    print(f"{'backend':<22}{'request':<28}{head}{'p99 ratio':>11}")
    keys = list(dict.fromkeys((b, label) for b, label, _, _ in rows))
    got = {(b, label, n): r for b, label, n, r in rows}
    for b, label in keys:
        cells = [got[(b, label, n)] for n in sizes]
        line = "".join(f"{r['p50']:>13.2f} /{r['p99']:>7.2f}{r['rps']:>8.0f}" for r in cells)
        ratio = cells[-1]["p99"] / cells[0]["p99"]
        print(f"{b:<22}{label:<28}{line}{ratio:>10.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--machines", default="10000", help="fleet sizes, comma list: 10000,100000")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument(
        "--only", default="", help="only requests whose label contains one of these (comma list)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved runs per figure (median)")
    ap.add_argument(
        "--backends", default="sqlite,postgresql", help="comma list (quick runs: sqlite)"
    )
    ap.add_argument(
        "--profile",
        type=Path,
        help="directory: py-spy samples each server during its first wrk run of each request "
        "(collapsed stacks; python -m bench.profile FILE prints the top functions)",
    )
    args = ap.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    sizes = [int(x) for x in args.machines.split(",")]
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        admin = create_engine(PG, isolation_level="AUTOCOMMIT")
        made: list[str] = []
        try:
            for name in args.backends.split(","):
                urls: dict[int, str] = {}
                for n in sizes:
                    if name == "postgresql":
                        made.append(f"bronze_bench_{uuid.uuid4().hex[:8]}")
                        with admin.connect() as c:
                            c.execute(text(f'CREATE DATABASE "{made[-1]}"'))
                        urls[n] = PG.rsplit("/", 1)[0] + "/" + made[-1]
                    else:
                        urls[n] = f"sqlite:///{tmp / f'bench-{n}.db'}"
                    t0 = time.monotonic()
                    seed(urls[n], n)
                    print(
                        f"seeded {n} machines on {name} in {time.monotonic() - t0:.1f}s",
                        file=sys.stderr,
                    )
                rows += measure(name, urls, args, tmp)
            top = ceiling(next(iter(BODIES.values())), args, tmp)
        finally:
            with admin.connect() as c:
                for db in made:
                    c.execute(
                        text(
                            f'DROP DATABASE IF EXISTS "{db}" WITH (FORMAT)'.replace(
                                "FORMAT", "FORCE"
                            )
                        )
                    )
            admin.dispose()

    report(rows, sizes, top, args)


if __name__ == "__main__":
    main()
