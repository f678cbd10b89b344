"""Console benchmark: the fleet page with 10,000 machines. Not a test: prints a table.

Seeds 10,000 labelled machines on SQLite (``bench.api.seed``), starts the app (uvicorn on
127.0.0.1, in this process) and times, from a signed-in client, whole requests of:
  - ``GET /ui/``                          first page (100 machines), counts by phase
  - ``GET /ui/?selector=...``             the filtered first page
  - ``GET /ui/?cursor=...``               page 60 of 100 (keyset: as fast as the first)
  - ``GET /ui/?part=rows`` + If-None-Match  a live poll when nothing changed (304)
with the read cache on (default) and off (``BRONZE_API_CACHE_MB=0``: every API read goes to the
database). Target (issue 14): the fleet page renders server-side in < 300 ms.

    .venv/bin/python -m bench.console [--machines 10000] [--rounds 40]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.api import SELECTOR, seed
from tests.peers.apiserver import run_server


def timed(c: httpx.Client, path: str, rounds: int, **kw: object) -> tuple[float, float, int]:
    ms: list[float] = []
    status = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        r = c.get(path, **kw)  # type: ignore[arg-type]
        ms.append((time.perf_counter() - t0) * 1000)
        status = r.status_code
    ms.sort()
    return statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))], status


def deep_cursor(c: httpx.Client, pages: int) -> str:
    path = "/ui/?limit=100"
    for _ in range(pages):
        m = re.search(r'href="([^"]+)" id="next-page"', c.get(path).text)
        assert m, "ran out of pages"
        path = m.group(1).replace("&amp;", "&")
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--machines", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()
    rows = []
    for cache_mb in (64, 0):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/bench.db"
            t0 = time.monotonic()
            seed(url, args.machines)
            print(f"seeded {args.machines} machines in {time.monotonic() - t0:.1f}s")
            with run_server(Path(tmp) / "data", url, api_cache_mb=cache_mb) as srv:
                c = httpx.Client(base_url=srv.url, timeout=60)
                assert c.post("/ui/login", data={"token": srv.admin_token}).status_code == 303
                first = c.get("/ui/")
                assert f"{args.machines} machines" in first.text
                deep = deep_cursor(c, 60)
                rows.append((cache_mb, "first page (100)", *timed(c, "/ui/", args.rounds)))
                rows.append(
                    (
                        cache_mb,
                        "filtered page",
                        *timed(c, "/ui/", args.rounds, params={"selector": SELECTOR}),
                    )
                )
                rows.append((cache_mb, "page 61 (keyset)", *timed(c, deep, args.rounds)))
                etag = c.get("/ui/?part=rows").headers["etag"]
                rows.append(
                    (
                        cache_mb,
                        "live poll, unchanged",
                        *timed(c, "/ui/?part=rows", args.rounds, headers={"If-None-Match": etag}),
                    )
                )
    print(f"\n{'cache MB':>8} | {'request':<22} | {'p50 ms':>7} | {'p99 ms':>7} | status")
    for cache_mb, name, p50, p99, status in rows:
        print(f"{cache_mb:>8} | {name:<22} | {p50:7.1f} | {p99:7.1f} | {status}")


if __name__ == "__main__":
    main()
