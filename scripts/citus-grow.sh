#!/usr/bin/env bash
# Growing the Citus cluster with data in place (issue 14, kahn-pg/README.md "Growing the
# cluster"): brings up a third worker on 127.0.0.1:5443 the way ../shared/scripts/citus-cluster.sh
# creates the other two (a PostgreSQL 15 cluster with citus preloaded, wal_level = logical like
# the others, trust on loopback), then runs the test that adds it to a KAHN database and
# rebalances (citus_rebalance_start) while 8 pushers append, and checks nothing was lost.
#
#   scripts/citus-grow.sh          # idempotent; leaves the third worker running
#   scripts/citus-grow.sh --down   # stops the third worker
set -euo pipefail
cd "$(dirname "$0")/.."
PGV=15
NAME=citus_w3
PORT=5443
if [[ ${1:-} == --down ]]; then
  pg_ctlcluster --skip-systemctl-redirect $PGV $NAME stop 2>/dev/null || true
  exit 0
fi
bash scripts/ensure-citus.sh
conf=/etc/postgresql/$PGV/$NAME
if [[ ! -d $conf ]]; then
  echo "citus-grow: creating worker $NAME on 127.0.0.1:$PORT"
  pg_createcluster $PGV $NAME --port $PORT >/dev/null
  {
    echo "shared_preload_libraries = 'citus'"
    echo "max_connections = 200"
    echo "wal_level = logical"
  } >> "$conf/postgresql.conf"
  sed -i -E 's/^(host\s+all\s+all\s+127\.0\.0\.1\/32\s+)\S+/\1trust/; s/^(host\s+all\s+all\s+::1\/128\s+)\S+/\1trust/; s/^(local\s+all\s+all\s+)peer/\1trust/' "$conf/pg_hba.conf"
fi
pg_ctlcluster --skip-systemctl-redirect $PGV $NAME status >/dev/null 2>&1 \
  || pg_ctlcluster --skip-systemctl-redirect $PGV $NAME start
for _ in $(seq 50); do psql -X -qtA "postgres://postgres@127.0.0.1:$PORT/postgres" -c 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
psql -X -q "postgres://postgres@127.0.0.1:$PORT/postgres" -c 'create extension if not exists citus' >/dev/null
echo "==> cargo test -p kahn-pg --test citus_grow -- --ignored --nocapture"
KAHN_TEST_CITUS_NEW_WORKER=127.0.0.1:$PORT cargo test -p kahn-pg --test citus_grow -- --ignored --nocapture
