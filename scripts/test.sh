#!/usr/bin/env bash
# The one test command: installs what the suite needs (Debian packages, a virtualenv with bronze and
# its test extras), makes sure PostgreSQL answers, then runs the whole suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
bash scripts/ensure-postgres.sh
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest "$@"
