"""Every table of bronze in one ``MetaData``, for Alembic and the migration test: importing the
models modules registers their tables on the shared declarative ``Base``."""

from __future__ import annotations

import server.rollouts.models  # noqa: F401  (registers the rollout tables)
from server.inventory.models import Base

metadata = Base.metadata
