"""The models and the migrations agree, and upgrade/downgrade round-trips, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from server.inventory import migrate
from server.inventory.schema import metadata


def _diff(url: str) -> list:
    engine = create_engine(url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, metadata)
    engine.dispose()
    return diff


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    names = set(inspect(engine).get_table_names())
    engine.dispose()
    return names


def test_models_match_migrations(db_url: str) -> None:
    migrate.upgrade(db_url)
    assert _diff(db_url) == []


def test_upgrade_downgrade_round_trip(db_url: str) -> None:
    migrate.upgrade(db_url)
    assert {"machines", "nics", "machine_labels", "events", "api_tokens"} <= _tables(db_url)
    migrate.downgrade(db_url, "base")
    assert _tables(db_url) <= {"alembic_version"}
    migrate.upgrade(db_url)
    assert _diff(db_url) == []


def test_single_head_and_date_slug_names() -> None:
    scripts = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    assert len(scripts.get_heads()) == 1
    for rev in scripts.walk_revisions():
        name = rev.path.rsplit("/", 1)[-1]
        assert name[:4].isdigit() and name[4] == "_", name
