#!/usr/bin/env bash
# Makes sure the machine's PostgreSQL cluster accepts connections on 127.0.0.1:5432, starting
# it when it is down, and waits (up to 60 s) until it does. Used by .ci/run before the tests.
# Does nothing when KAHN_TEST_PG_URL points elsewhere and that server is ready.
set -euo pipefail

host="${KAHN_PG_HOST:-127.0.0.1}"
port="${KAHN_PG_PORT:-5432}"

ready() { pg_isready -q -h "$host" -p "$port"; }

if ready; then
    echo "postgres: accepting connections on $host:$port"
    exit 0
fi

if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ ! -d /etc/postgresql ]; then
    echo "postgres: not reachable on $host:$port and no local cluster to start." >&2
    echo "Install PostgreSQL (apt-get install postgresql) or set KAHN_TEST_PG_URL." >&2
    exit 1
fi

version="$(ls /etc/postgresql | sort -V | tail -n 1)"
echo "postgres: starting cluster $version/main"
pg_ctlcluster --skip-systemctl-redirect "$version" main start || true

for _ in $(seq 1 60); do
    if ready; then
        echo "postgres: accepting connections on $host:$port"
        exit 0
    fi
    sleep 1
done
echo "postgres: cluster $version/main did not accept connections on $host:$port within 60 s" >&2
exit 1
