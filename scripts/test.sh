#!/usr/bin/env bash
# The one test command: installs what the suite needs (Debian packages, a virtualenv with bronze and
# its test extras), makes the local PostgreSQL usable by the suite (role, password, database: see
# ensure-postgres.sh), then runs the whole suite. Extra args go to pytest. Needs root: the suite
# creates network namespaces and runs QEMU, and the setup installs packages and acts as `postgres`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
bash scripts/ensure-postgres.sh
if [ -z "${BRONZE_TEST_PG_URL:-}" ]; then
  pwfile=${BRONZE_TEST_PG_PASSWORD_FILE:-$HOME/.config/bronze/test-pg.password}
  export BRONZE_TEST_PG_URL="postgresql+psycopg://bronze_test:$(cat "$pwfile")@127.0.0.1:${BRONZE_TEST_PG_PORT:-5432}/test"
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# Static checks first (seconds): lint, formatting and types, with the project's own configs.
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
.venv/bin/python -m mypy
exec .venv/bin/python -m pytest "$@"
