"""API benchmark (issue: server foundation). Not a test: prints a table.

Seeds 10,000 labelled machines, then measures with wrk (server pinned to CPU 0, wrk to CPU 1):
  - GET /api/v1/machines?selector=...&limit=100   (filtered page)
  - GET /api/v1/machines/{name}                    (one machine; and a random one of the 10,000)
on SQLite and on PostgreSQL, each with the read cache (default) and without it
(BRONZE_API_CACHE_MB=0: every request reads the database), beside a bare FastAPI endpoint
returning a JSON body of the same size (the framework ceiling). Targets: filtered-page p99 <= 50
ms; >= 50% of the ceiling's req/s.

    .venv/bin/python -m bench.api [--machines 10000] [--duration 10] [--connections 16]
"""

from __future__ import annotations

import argparse
import json
import os
import re
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

from server.inventory import migrate
from server.inventory.models import Machine, MachineLabel, Nic
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[1]

SELECTOR = "role in (worker,storage),zone=z1,!maintenance"
"""A broad selector (15 % of the fleet): its page walks the name index."""
RACK = "rack=r0007,!maintenance"
"""A narrow one (36 machines of one rack): its page starts from the rack's label rows."""
PG = os.environ.get("BRONZE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def seed(url: str, n: int) -> None:
    migrate.upgrade(url)
    engine = create_engine(url)
    now = datetime.now(UTC)
    machines, nics, labels = [], [], []
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
        nics.append(
            dict(
                machine_id=mid,
                mac=":".join(f"{b:02x}" for b in (2, 0, 0, i >> 16 & 255, i >> 8 & 255, i & 255)),
            )
        )
        lab = {  # a rack holds 40 machines, 4 roles, 3 zones, 2 labels unique to the machine
            "rack": f"r{i // 40:04d}",
            "role": ("worker", "storage", "control", "gpu")[i % 4],
            "zone": f"z{i % 3}",
            "asset": f"a{i:06d}",
            "example.com/serial": f"sn{i * 7919 % 1_000_003:07d}",
        }
        if i % 10 == 0:
            lab["maintenance"] = ""
        labels += [dict(machine_id=mid, key=k, value=v) for k, v in lab.items()]
    with engine.begin() as conn:
        for table, rows in (
            (Machine.__table__, machines),
            (Nic.__table__, nics),
            (MachineLabel.__table__, labels),
        ):
            for j in range(0, len(rows), 2000):
                conn.execute(insert(table), rows[j : j + 2000])
        if conn.dialect.name == "postgresql":
            conn.execute(text("ANALYZE"))
        else:
            conn.execute(text("ANALYZE"))
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--machines", type=int, default=10_000)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument(
        "--backends", default="sqlite,postgresql", help="comma list (quick runs: sqlite)"
    )
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pg_db = f"bronze_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(PG, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{pg_db}"'))
        pg_url = PG.rsplit("/", 1)[0] + "/" + pg_db
        backends = {
            k: v
            for k, v in {"sqlite": f"sqlite:///{tmp / 'bench.db'}", "postgresql": pg_url}.items()
            if k in args.backends.split(",")
        }
        bodies: dict[str, bytes] = {}
        try:
            for name, url in backends.items():
                t0 = time.monotonic()
                seed(url, args.machines)
                print(
                    f"seeded {args.machines} machines on {name} in {time.monotonic() - t0:.1f}s",
                    file=sys.stderr,
                )
                for cache_mb, suffix in (("64", ""), ("0", ", no cache")):
                    token = "brz_" + uuid.uuid4().hex + uuid.uuid4().hex[:11]
                    proc, base = serve(
                        {
                            "BRONZE_DATA_DIR": str(tmp / name),
                            "BRONZE_DATABASE_URL": url,
                            "BRONZE_ADMIN_TOKEN": token,
                            "BRONZE_API_CACHE_MB": cache_mb,
                        },
                        tmp,
                    )
                    try:
                        page_path = "/api/v1/machines?" + str(
                            httpx.QueryParams({"selector": SELECTOR, "limit": 100})
                        )
                        one_path = "/api/v1/machines/node-04242"
                        h = {"Authorization": f"Bearer {token}"}
                        page = httpx.get(base + page_path, headers=h).content
                        assert len(json.loads(page)["items"]) == 100, page[:200]
                        bodies["page"], bodies["one"] = (
                            page,
                            httpx.get(base + one_path, headers=h).content,
                        )
                        for label, path, random_names in (
                            ("filtered page (100)", page_path, 0),
                            ("one machine", one_path, 0),
                            ("one machine", "/", args.machines),
                        ):
                            r = wrk(
                                base,
                                path,
                                token,
                                args.duration,
                                args.connections,
                                tmp,
                                random_names,
                            )
                            shown = f"{label}, random of {random_names}" if random_names else label
                            rows.append((name + suffix, shown, label, r))
                    finally:
                        proc.terminate()
                        proc.wait(10)
            for label, key in (("filtered page (100)", "page"), ("one machine", "one")):
                mod = ceiling_app(tmp, bodies[key], key)
                port = free_port()
                proc = subprocess.Popen(
                    [
                        "taskset",
                        "-c",
                        "0",
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "--app-dir",
                        str(tmp),
                        f"{mod.stem}:app",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--log-level",
                        "warning",
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
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
                    rows.append(
                        (
                            "bare FastAPI",
                            label,
                            label,
                            wrk(base, "/x", "none", args.duration, args.connections, tmp),
                        )
                    )
                finally:
                    proc.terminate()
                    proc.wait(10)
        finally:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)'))
            admin.dispose()

    ceiling = {label: r["rps"] for name, _, label, r in rows if name == "bare FastAPI"}
    print(
        f"\n{args.machines} machines, wrk -c{args.connections} {args.duration}s, "
        "server on CPU 0, wrk on CPU 1"
    )
    print(f"{'backend':<24}{'request':<34}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'% ceiling':>11}")
    for name, shown, label, r in rows:
        pct = 100 * r["rps"] / ceiling[label]
        print(f"{name:<24}{shown:<34}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['rps']:>9.0f}{pct:>10.0f}%")


if __name__ == "__main__":
    main()
