#!/usr/bin/env bash
# Makes sure a Citus cluster is up for the scale-out tests (issue 14): a coordinator with at
# least two workers. Run by scripts/test (through its `scripts/ensure-*.sh` loop) and by
# scripts/test-citus.
#
# * KAHN_TEST_CITUS_URL set: that coordinator is used as it is; this only checks it answers.
# * Otherwise: the machine's cluster from the shared/ folder beside this repository,
#   `bash ../shared/scripts/citus-cluster.sh` (idempotent; builds Citus once per machine, about
#   6 minutes on 2 cores; coordinator 127.0.0.1:5440, workers 5441 and 5442).
# No cluster to be had → exit 1 with what to do: the run fails, it never skips the Citus tests.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${KAHN_TEST_CITUS_URL:-}" ]; then
  if psql "$KAHN_TEST_CITUS_URL" -Atqc "SELECT count(*) FROM pg_dist_node WHERE groupid <> 0" >/dev/null; then
    echo "citus: using the coordinator at KAHN_TEST_CITUS_URL"
    exit 0
  fi
  echo "citus: KAHN_TEST_CITUS_URL is set but its coordinator does not answer as a Citus coordinator" >&2
  exit 1
fi

cluster=../shared/scripts/citus-cluster.sh
if [ ! -f "$cluster" ]; then
  cat >&2 <<MSG
citus: no Citus cluster for the scale-out tests.
  $cluster was not found (it lives in the shared/ folder beside this repository).
  Either put it there, or point KAHN_TEST_CITUS_URL at the admin URL of a Citus coordinator
  with two workers (e.g. postgres://postgres@127.0.0.1:5440/postgres).
MSG
  exit 1
fi
echo "citus: bash $cluster"
bash "$cluster"
