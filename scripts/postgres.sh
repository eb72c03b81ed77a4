#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for tests: TCP on 127.0.0.1 only, trust auth, no durability.
#   scripts/postgres.sh start DIR PORT   initialise DIR (once) and start it, create database parley, print its URL
#   scripts/postgres.sh stop DIR         stop it (fast: open sessions are ended)
# PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` system user
# (DIR is given to it); as anyone else it runs as that user. Both commands are idempotent.
set -euo pipefail

bin="${PARLEY_POSTGRES_BIN:-/usr/lib/postgresql/15/bin}"
usage="usage: postgres.sh start DIR PORT | stop DIR"
cmd="${1:?$usage}"
dir="${2:?missing DIR}"

die() {
  echo "postgres.sh: $*" >&2
  exit 1
}

# Runs a server-side command as the cluster's owner.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

[ -x "$bin/pg_ctl" ] || die "no PostgreSQL binaries in $bin (apt-get install postgresql-15)"
if [ "$cmd" = stop ] && [ ! -d "$dir" ]; then
  exit 0
fi
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
data="$dir/data"

running() {
  [ -f "$data/PG_VERSION" ] && as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1
}

case "$cmd" in
  start)
    port="${3:?missing PORT}"
    [[ $port =~ ^[0-9]+$ ]] || die "PORT must be a number, not $port"
    if [ "$(id -u)" = 0 ]; then
      chown postgres:postgres "$dir"
      # The postgres user must be able to reach DIR. A parent made by `mktemp -d` (mode 0700)
      # would stop it, so such a parent gets search permission only (not read: nothing in it
      # can be listed), top down so that each check sees the path as it now is.
      path=""
      IFS=/ read -ra parts <<<"${dir#/}"
      for part in "${parts[@]}"; do
        path="$path/$part"
        if ! runuser -u postgres -- test -x "$path"; then
          chmod o+x "$path"
          echo "postgres.sh: gave others search permission on $path so the postgres user can reach $dir" >&2
        fi
      done
      runuser -u postgres -- test -w "$dir" || die "the postgres user cannot write to $dir"
    fi
    if [ ! -f "$data/PG_VERSION" ]; then
      as_owner "$bin/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
      # No unix socket: the only way in is 127.0.0.1:PORT. A test cluster keeps nothing worth
      # an fsync. Each test opens its own pools, so allow more than the default 100 connections.
      cat >>"$data/postgresql.conf" <<'CONF'

# scripts/postgres.sh
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
    fi
    if running; then
      # postmaster.pid's fourth line is the port it listens on.
      current="$(sed -n 4p "$data/postmaster.pid")"
      [ "$current" = "$port" ] || die "already running in $dir on port $current, not $port"
    else
      as_owner "$bin/pg_ctl" -D "$data" -l "$dir/postgres.log" -o "-p $port" -w -t 60 start >/dev/null ||
        { tail -n 20 "$dir/postgres.log" >&2; die "the server did not start"; }
    fi
    for _ in $(seq 100); do
      "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres && break
      sleep 0.1
    done
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres || die "not accepting connections on port $port"
    psql=("$bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres)
    if [ -z "$("${psql[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = 'parley'")" ]; then
      "${psql[@]}" -c "CREATE DATABASE parley"
    fi
    echo "postgres://postgres@127.0.0.1:$port/parley"
    ;;
  stop)
    if running; then
      as_owner "$bin/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
    fi
    ;;
  *)
    die "$usage"
    ;;
esac
