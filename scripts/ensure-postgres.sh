#!/usr/bin/env bash
# Makes the local PostgreSQL cluster ready for the test suite, from a fresh Debian install on:
#   1. starts the cluster if it is down (127.0.0.1:$PORT);
#   2. creates the role `bronze_test` (LOGIN CREATEDB, nothing else) with a random password kept
#      in $BRONZE_TEST_PG_PASSWORD_FILE (default ~/.config/bronze/test-pg.password, mode 0600);
#   3. creates the database `test` (the suite's admin database: every test creates and drops its
#      own `bronze_t_*` database from there).
# Debian's default pg_hba.conf is left alone: TCP from 127.0.0.1 asks for a password
# (scram-sha-256), which the role has; setup itself runs as the `postgres` OS user over the Unix
# socket (peer auth), so the script needs root (as the suite does) or the postgres user.
# Idempotent: an existing role keeps its password when the file's password still logs in (other
# checkouts on this machine share the role and the file); nothing is ever dropped.
# With BRONZE_TEST_PG_URL set, that server is used as is and nothing is done here.
# scripts/test.sh builds BRONZE_TEST_PG_URL from the file; tests/peers/database.py reads it too.
set -euo pipefail
[ -n "${BRONZE_TEST_PG_URL:-}" ] && exit 0
PORT=${BRONZE_TEST_PG_PORT:-5432}
ROLE=bronze_test
PWFILE=${BRONZE_TEST_PG_PASSWORD_FILE:-$HOME/.config/bronze/test-pg.password}

# 1. the cluster: the one on $PORT (BRONZE_TEST_PG_CLUSTER=VERSION/NAME to name it).
cluster=${BRONZE_TEST_PG_CLUSTER:-}
if [ -z "$cluster" ]; then
  cluster=$(pg_lsclusters -h 2>/dev/null | awk -v p="$PORT" '$3 == p {print $1 "/" $2; exit}')
fi
if [ -z "$cluster" ]; then
  echo "ensure-postgres: no PostgreSQL cluster on port $PORT (pg_lsclusters)" >&2; exit 1
fi
if ! pg_isready -q -h 127.0.0.1 -p "$PORT" 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "${cluster%/*}" "${cluster#*/}" start
  for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p "$PORT" && break; sleep 0.2; done
  pg_isready -q -h 127.0.0.1 -p "$PORT" ||
    { echo "ensure-postgres: PostgreSQL did not come up on 127.0.0.1:$PORT" >&2; exit 1; }
fi

as_postgres() {  # psql as the cluster's superuser over the Unix socket (peer auth)
  local sock; sock=$(pg_conftool -s "${cluster%/*}" "${cluster#*/}" show unix_socket_directories \
    2>/dev/null | cut -d, -f1); sock=${sock:-/var/run/postgresql}
  if [ "$(id -un)" = postgres ]; then psql -h "$sock" -p "$PORT" -qAtX -v ON_ERROR_STOP=1 "$@"
  else runuser -u postgres -- psql -h "$sock" -p "$PORT" -qAtX -v ON_ERROR_STOP=1 "$@"; fi
}
logs_in() {  # does the password in $PWFILE log the role in over TCP?
  PGPASSWORD=$(cat "$PWFILE") PGCONNECT_TIMEOUT=5 psql -h 127.0.0.1 -p "$PORT" -U "$ROLE" \
    -d postgres -qAtX -c 'select 1' >/dev/null 2>&1
}

# 2. the password file (0600, never printed) and the role.
if [ ! -s "$PWFILE" ]; then
  mkdir -p "$(dirname "$PWFILE")"
  (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$PWFILE")
fi
chmod 600 "$PWFILE"
role_exists=$(as_postgres -c "select 1 from pg_roles where rolname = '$ROLE'")
if [ -z "$role_exists" ]; then
  as_postgres -c "create role $ROLE login createdb"
fi
if [ -z "$role_exists" ] || ! logs_in; then
  # Only a SCRAM verifier reaches the server (computed here, sent on psql's stdin): the password
  # is never in argv, in a statement the server might log, or in pg_authid.
  verifier=$(python3 - "$PWFILE" <<'PY'
import base64, hashlib, hmac, os, sys
pw, salt, n = open(sys.argv[1], "rb").read().strip(), os.urandom(16), 4096
salted = hashlib.pbkdf2_hmac("sha256", pw, salt, n)
client = hmac.new(salted, b"Client Key", "sha256").digest()
server = hmac.new(salted, b"Server Key", "sha256").digest()
b64 = lambda b: base64.b64encode(b).decode()
print(f"SCRAM-SHA-256${n}:{b64(salt)}${b64(hashlib.sha256(client).digest())}:{b64(server)}")
PY
)
  printf "alter role %s password '%s';\n" "$ROLE" "$verifier" | as_postgres -f -
fi

# 3. the admin database the suite connects to.
if [ -z "$(as_postgres -c "select 1 from pg_database where datname = 'test'")" ]; then
  as_postgres -c "create database test owner $ROLE"
fi
logs_in || { echo "ensure-postgres: $ROLE cannot log in on 127.0.0.1:$PORT" >&2; exit 1; }
