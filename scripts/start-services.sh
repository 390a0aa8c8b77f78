#!/usr/bin/env bash
# Start PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) if they are not running, and
# give the tests a database of their own. Idempotent; any failing step is one clear line on
# stderr and a non-zero exit.
#
# A stock Debian 12 PostgreSQL trusts nobody: pg_hba.conf has `local all postgres peer` and
# `host all all 127.0.0.1/32 scram-sha-256`. So, without touching that configuration:
#   - the administration (psql, createdb) runs as the OS user `postgres` over the unix socket
#     (/var/run/postgresql), which peer authentication lets in as the superuser `postgres`;
#   - it makes (or updates) a test-only role `lumbarnode_test` with a password and a database
#     `lumbarnode_test` that the role owns (the tests create and drop schemas in it);
#   - the password is generated here on the first run, is no secret of anything else, and is
#     kept outside git with the URL the tests use, in build/test-postgres.url, which
#     tests/conftest.py reads (LUMBARNODE_TEST_POSTGRES_URL still overrides it);
#   - the tests connect over TCP (the fault tests relay that connection through a proxy), so
#     the URL carries the password: scram-sha-256 checks it, a trusting server ignores it.
# Finally it connects with that URL's credentials over TCP and creates a schema, as the tests will.
#
# Settings (environment), for another cluster such as tests/system/test_setup_scripts.py's throwaway one:
#   LUMBARNODE_PG_HOST (127.0.0.1), LUMBARNODE_PG_PORT (5432), LUMBARNODE_PG_SOCKET_DIR
#   (/var/run/postgresql), LUMBARNODE_PG_ADMIN (postgres: OS user and role of the peer login),
#   LUMBARNODE_PG_CLUSTER ("<version> <name>" for pg_ctlcluster; the newest version in
#   /etc/postgresql, cluster main), LUMBARNODE_TEST_PG_ROLE / LUMBARNODE_TEST_PG_DB
#   (lumbarnode_test), LUMBARNODE_TEST_POSTGRES_URL_FILE (build/test-postgres.url),
#   LUMBARNODE_SERVICES ("postgresql redis": which of the two to see to).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pg_host=${LUMBARNODE_PG_HOST:-127.0.0.1}
pg_port=${LUMBARNODE_PG_PORT:-5432}
pg_socket=${LUMBARNODE_PG_SOCKET_DIR:-/var/run/postgresql}
pg_admin=${LUMBARNODE_PG_ADMIN:-postgres}
test_role=${LUMBARNODE_TEST_PG_ROLE:-lumbarnode_test}
test_db=${LUMBARNODE_TEST_PG_DB:-lumbarnode_test}
url_file=${LUMBARNODE_TEST_POSTGRES_URL_FILE:-$root/build/test-postgres.url}
services=" ${LUMBARNODE_SERVICES:-postgresql redis} "

fail() { echo "start-services.sh: error: $*" >&2; exit 1; }
one_line() { printf '%s' "$1" | tr -s '\n\t ' ' ' | sed 's/^ //; s/ $//'; }  # a tool's output, on the error's line
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# A PostgreSQL client run as the cluster's admin OS user (peer authentication on the socket).
# From / so that the admin user need not be able to read the current directory.
as_admin() {
  if [ "$(id -un)" = "$pg_admin" ]; then (cd / && "$@")
  elif [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u "$pg_admin" -- "$@")
  else (cd / && sudo -n -u "$pg_admin" -- "$@"); fi
}
admin_psql() {  # SQL on stdin; prints the rows
  as_admin psql -X -q -tA -v ON_ERROR_STOP=1 -h "$pg_socket" -p "$pg_port" -U "$pg_admin" -d postgres
}

setup_postgresql() {
  local out version cluster
  for name in "$test_role" "$test_db"; do
    [[ $name =~ ^[a-z_][a-z0-9_]*$ ]] || fail "PostgreSQL name '$name' is not a plain lower-case identifier"
  done
  if ! pg_isready -q -h "$pg_host" -p "$pg_port"; then
    if [ -n "${LUMBARNODE_PG_CLUSTER:-}" ]; then
      cluster=$LUMBARNODE_PG_CLUSTER
    else
      version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
      [ -n "$version" ] || fail "no PostgreSQL cluster in /etc/postgresql (install the postgresql package: scripts/install-system-deps.sh)"
      cluster="$version main"
    fi
    echo "starting PostgreSQL $cluster"
    # shellcheck disable=SC2086 # "<version> <name>": two words on purpose
    out=$($sudo pg_ctlcluster --skip-systemctl-redirect $cluster start 2>&1 </dev/null) \
      || fail "pg_ctlcluster $cluster start failed: $(one_line "$out")"
    local deadline=$((SECONDS + 30))
    until pg_isready -q -h "$pg_host" -p "$pg_port"; do
      [ $SECONDS -lt $deadline ] || fail "PostgreSQL $cluster started but does not answer on $pg_host:$pg_port after 30 s"
      sleep 0.2
    done
  fi

  # The test role's password: generated once per checkout, then reused.
  local password=""
  if [ -s "$url_file" ]; then
    password=$(sed -n "s|^postgresql+psycopg://$test_role:\([0-9a-f]\{32\}\)@.*|\1|p" "$url_file")
  fi
  [ -n "$password" ] || password=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')

  out=$(admin_psql 2>&1 <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$test_role') THEN CREATE ROLE $test_role; END IF;
END \$\$;
ALTER ROLE $test_role LOGIN NOSUPERUSER PASSWORD '$password';
SQL
  ) || fail "creating PostgreSQL role $test_role as $pg_admin over $pg_socket (port $pg_port) failed: $(one_line "$out")"

  out=$(admin_psql 2>&1 <<<"SELECT 1 FROM pg_database WHERE datname = '$test_db'") \
    || fail "looking up database $test_db as $pg_admin over $pg_socket (port $pg_port) failed: $(one_line "$out")"
  if [ "$out" != 1 ]; then
    echo "creating PostgreSQL database $test_db"
    out=$(as_admin createdb -h "$pg_socket" -p "$pg_port" -U "$pg_admin" -O "$test_role" "$test_db" 2>&1 </dev/null) \
      || fail "createdb $test_db failed: $(one_line "$out")"
  fi

  # The URL the tests will use, checked as they use it: over TCP, with the password.
  local probe="lumbarnode_setup_probe_$$"
  out=$(cd / && PGPASSWORD=$password PGCONNECT_TIMEOUT=10 psql -X -q -v ON_ERROR_STOP=1 -h "$pg_host" -p "$pg_port" \
        -U "$test_role" -d "$test_db" -c "CREATE SCHEMA $probe" -c "DROP SCHEMA $probe" 2>&1 </dev/null) \
    || fail "role $test_role cannot create a schema in database $test_db on $pg_host:$pg_port: $(one_line "$out")"

  mkdir -p "$(dirname "$url_file")" || fail "cannot create the folder of $url_file"
  (umask 077 && printf 'postgresql+psycopg://%s:%s@%s:%s/%s\n' "$test_role" "$password" "$pg_host" "$pg_port" \
    "$test_db" >"$url_file.tmp" && mv "$url_file.tmp" "$url_file") || fail "cannot write $url_file"
}

start_redis() {
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return 0
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  local out
  out=$($sudo redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/lumbarnode-ci.log 2>&1 </dev/null) \
    || fail "redis-server failed to start: $(one_line "$out")"
  local deadline=$((SECONDS + 10))
  until redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "Redis started but does not answer on 127.0.0.1:6379 after 10 s (see /var/log/redis/lumbarnode-ci.log)"
    sleep 0.1
  done
}

[[ $services != *" postgresql "* ]] || setup_postgresql
[[ $services != *" redis "* ]] || start_redis
