"""The models and the migrations agree, and upgrade/downgrade round-trips, on SQLite and
PostgreSQL."""

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


def test_single_head_and_names_sort_in_revision_order() -> None:
    """A directory listing reads as the upgrade path: ``NNNN_slug.py`` with NNNN the revision."""
    scripts = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    assert len(scripts.get_heads()) == 1
    chain = list(reversed(list(scripts.walk_revisions())))  # base first
    names = [rev.path.rsplit("/", 1)[-1] for rev in chain]
    for rev, name in zip(chain, names, strict=True):
        assert name.startswith(f"{rev.revision}_"), name
    assert names == sorted(names)
