"""scripts/ensure-postgres.sh on a fresh Debian PostgreSQL: a throwaway cluster made here with
Debian's defaults (``pg_createcluster``: TCP asks for a password, scram-sha-256; no ``test``
database; cluster down), on its own port, dropped at the end. The script must leave it usable by
the suite, idempotently, and recover from a dropped ``test`` database and a lost password file.
Needs root, as the suite does. Never touches the shared cluster on 5432."""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.support.paths import ROOT
from tests.support.ports import free_port

SCRIPT = ROOT / "scripts" / "ensure-postgres.sh"


@dataclass
class Cluster:
    version: str
    name: str
    port: int

    def psql(self, sql: str) -> str:
        """As the cluster's superuser over the Unix socket (peer auth)."""
        argv = ["runuser", "-u", "postgres", "--", "psql", "-h", "/var/run/postgresql"]
        argv += ["-p", str(self.port), "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()

    def log(self) -> str:
        path = Path(f"/var/log/postgresql/postgresql-{self.version}-{self.name}.log")
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    version = sorted(os.listdir("/usr/lib/postgresql"))[-1]
    c = Cluster(version, f"bronze_t_{uuid.uuid4().hex[:8]}", free_port())
    subprocess.run(
        ["pg_createcluster", version, c.name, "-p", str(c.port)], capture_output=True, check=True
    )
    try:
        yield c
    finally:
        subprocess.run(["pg_dropcluster", "--stop", version, c.name], capture_output=True)


def ensure(cluster: Cluster, pwfile: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRONZE_TEST_PG_")}
    env |= {"BRONZE_TEST_PG_PORT": str(cluster.port), "BRONZE_TEST_PG_PASSWORD_FILE": str(pwfile)}
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def usable(cluster: Cluster, pwfile: Path) -> None:
    """What the suite does: connect to ``test`` as bronze_test, create and drop a database."""
    url = f"postgresql+psycopg://bronze_test:{pwfile.read_text()}@127.0.0.1:{cluster.port}/test"
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text('CREATE DATABASE "bronze_t_probe"'))
            conn.execute(text('DROP DATABASE "bronze_t_probe" WITH (FORCE)'))
    finally:
        engine.dispose()


def test_fresh_cluster_becomes_usable_idempotently(cluster: Cluster, tmp_path: Path) -> None:
    hba = Path(f"/etc/postgresql/{cluster.version}/{cluster.name}/pg_hba.conf").read_text()
    rules = [ln.split() for ln in hba.splitlines() if ln.strip() and not ln.startswith("#")]
    assert rules and all("trust" not in rule for rule in rules)  # Debian's defaults
    pwfile = tmp_path / "cfg" / "test-pg.password"

    first = ensure(cluster, pwfile)  # cluster down, no role, no database
    assert stat.S_IMODE(pwfile.stat().st_mode) == 0o600
    password = pwfile.read_text()
    assert len(password) >= 32 and password not in first.stdout + first.stderr
    usable(cluster, pwfile)
    role = "select rolsuper, rolcreatedb from pg_roles where rolname = 'bronze_test'"
    assert cluster.psql(role) == "f|t"  # may create databases, nothing more

    ensure(cluster, pwfile)  # again: nothing changes, the password stays
    assert pwfile.read_text() == password
    usable(cluster, pwfile)

    cluster.psql("DROP DATABASE test")
    ensure(cluster, pwfile)
    usable(cluster, pwfile)

    pwfile.unlink()  # a lost password file: a new password, set on the existing role
    ensure(cluster, pwfile)
    assert pwfile.read_text() != password
    usable(cluster, pwfile)
    assert password not in cluster.log() and pwfile.read_text() not in cluster.log()
    stored = cluster.psql("select rolpassword from pg_authid where rolname='bronze_test'")
    assert stored.startswith("SCRAM-SHA-256$")


def test_stopped_cluster_is_started(cluster: Cluster, tmp_path: Path) -> None:
    pwfile = tmp_path / "pw"
    ensure(cluster, pwfile)
    subprocess.run(["pg_ctlcluster", cluster.version, cluster.name, "stop"], check=True)
    ensure(cluster, pwfile)
    usable(cluster, pwfile)
