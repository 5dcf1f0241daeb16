#!/bin/sh
# First start: initdb, then a server on the Unix socket only that creates the
# database, stopped again; then (every start) the server on TCP. The first
# server logs "ready to accept connections" too: only a query over TCP says
# the real one is up.
set -eu
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is not set}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  printf '%s\n' "$POSTGRES_PASSWORD" >/tmp/password
  initdb --username="$POSTGRES_USER" --pwfile=/tmp/password --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 --no-sync >/dev/null
  rm /tmp/password
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  pg_ctl --wait --silent --options="-c listen_addresses=''" start
  if [ "$POSTGRES_DB" != postgres ]; then
    psql --quiet --set=ON_ERROR_STOP=1 --username="$POSTGRES_USER" --dbname=postgres \
      --command="CREATE DATABASE \"$POSTGRES_DB\""
  fi
  pg_ctl --wait --silent --mode=fast stop
  echo "postgres-entrypoint: initialised $PGDATA, database $POSTGRES_DB; starting for real"
fi
exec postgres -c listen_addresses='*' -c jit=off -c fsync=off
