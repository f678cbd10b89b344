#!/usr/bin/env bash
# Makes sure the PostgreSQL server the tests use answers. With BRONZE_TEST_PG_URL set, that server
# is used as is; otherwise the local cluster on 127.0.0.1:5432 (database `test`) is started if down.
set -euo pipefail
[ -n "${BRONZE_TEST_PG_URL:-}" ] && exit 0
if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then exit 0; fi
ver=$(ls /etc/postgresql 2>/dev/null | head -n1)
if [ -z "$ver" ]; then echo "ensure-postgres: no PostgreSQL cluster under /etc/postgresql" >&2; exit 1; fi
pg_ctlcluster --skip-systemctl-redirect "$ver" main start
for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && exit 0; sleep 0.2; done
echo "ensure-postgres: PostgreSQL did not come up on 127.0.0.1:5432" >&2; exit 1
