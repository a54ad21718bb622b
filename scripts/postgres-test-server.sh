#!/usr/bin/env bash
# Start a local PostgreSQL server for the sweep tests and print its URL on stdout.
#
# Idempotent: installs Debian's `postgresql` when missing (root only), creates and starts a
# cluster listening on 127.0.0.1, and creates the role and database bpfree uses. Usage:
#
#   export BPFREE_TEST_POSTGRES=$(bash scripts/postgres-test-server.sh)
#
# Exits non-zero (with the reason on stderr) when no server can be had on this machine.
set -euo pipefail
# Only the URL goes to stdout: every tool below (pg_ctlcluster prints "Removed stale pid file."
# on a restarted machine) writes to stderr instead.
exec 3>&1 1>&2
ROLE=${BPFREE_PG_ROLE:-bpfree}
PASSWORD=${BPFREE_PG_PASSWORD:-bpfree}
DB=${BPFREE_PG_DB:-bpfree_test}

if [ "$(id -u)" != 0 ]; then
  echo "postgres-test-server: needs root (to install and start a cluster)" >&2
  exit 1
fi
if ! command -v pg_lsclusters >/dev/null; then
  if ! command -v apt-get >/dev/null; then
    echo "postgres-test-server: no pg_lsclusters and no apt-get to install postgresql" >&2
    exit 1
  fi
  apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

version=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | awk '{print $1, $2}' | grep -qx "$version main"; then
  pg_createcluster "$version" main >/dev/null
fi
port=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $4}' | grep -q online; then
  # A machine restored from a snapshot can keep a socket lock naming a dead postmaster.
  lock=/var/run/postgresql/.s.PGSQL.$port.lock
  if [ -f "$lock" ] && ! kill -0 "$(head -1 "$lock")" 2>/dev/null; then rm -f "$lock"; fi
  pg_ctlcluster "$version" main start 3>&-  # the server must not hold our stdout open
fi
for _ in $(seq 1 30); do
  pg_isready -q -h 127.0.0.1 -p "$port" && break
  sleep 1
done
pg_isready -q -h 127.0.0.1 -p "$port" || {
  echo "postgres-test-server: server on 127.0.0.1:$port did not become ready" >&2
  exit 1
}

psql_admin() { su postgres -c "psql -p $port -v ON_ERROR_STOP=1 -tAq -c \"$1\""; }
if [ "$(psql_admin "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != 1 ]; then
  psql_admin "CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD'" >/dev/null
fi
if [ "$(psql_admin "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
  psql_admin "CREATE DATABASE $DB OWNER $ROLE" >/dev/null
fi
# The driver named explicitly: SQLAlchemy 2.1 reads a plain postgresql:// as psycopg 3, while
# bpfree's sweep extra installs psycopg2 (bpfree itself accepts either form).
echo "postgresql+psycopg2://$ROLE:$PASSWORD@127.0.0.1:$port/$DB" >&3
