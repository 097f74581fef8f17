#!/usr/bin/env bash
# Makes sure the viewer's end-to-end tests can run: Debian's Chromium at /usr/bin/chromium
# (installed with apt-get only when missing) and the test's npm packages (npm ci, from the
# lock file). Run by scripts/test (every scripts/ensure-*.sh) and by scripts/test-viewer.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

chromium="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "chromium: $chromium is missing and apt-get is not available; install Chromium and set CHROMIUM" >&2
        exit 1
    fi
    echo "chromium: $chromium is missing; installing Debian's chromium package"
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends chromium
fi
echo "chromium: $("$chromium" --version 2>/dev/null | head -n 1)"

if ! command -v npm >/dev/null 2>&1; then
    echo "viewer-tests: npm (Node.js 18 or newer) is missing; install nodejs and npm" >&2
    exit 1
fi
# playwright-core drives the system Chromium; it never downloads a browser of its own.
(cd viewer-tests && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
echo "viewer-tests: npm packages installed"
