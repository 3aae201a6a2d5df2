#!/usr/bin/env bash
# Pre-installs the third-party WebGL splat viewers that tests/test_third_party_viewers.py opens
# (exact versions: tests/viewers/package-lock.json) into the cache folder the test reads:
# $GSHEAD_NPM_VIEWER_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/gshead-tests/npm-viewers. The test
# installs them itself when they are missing; this only moves the download out of the test run.
# Never into the repository (no node_modules is committed). Exits 0 with a note when node/npm or
# the registry is not there: the test is then skipped.
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)/tests/viewers"
cache="${GSHEAD_NPM_VIEWER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gshead-tests/npm-viewers}"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "note: node/npm not installed; the third-party viewer test will be skipped"
  exit 0
fi
if [ -f "$cache/.installed" ] && cmp -s "$here/package-lock.json" "$cache/package-lock.json"; then
  exit 0  # already installed from this lock file
fi
mkdir -p "$cache" && rm -f "$cache/.installed"
cp "$here/package.json" "$here/package-lock.json" "$cache/"
if (cd "$cache" && npm ci --no-audit --no-fund --ignore-scripts --fetch-retries=2 \
      --fetch-retry-mintimeout=2000 --fetch-retry-maxtimeout=10000 >/dev/null 2>&1); then
  echo ok > "$cache/.installed"
else
  echo "note: npm ci of the viewers failed (no registry?); the third-party viewer test will be skipped"
fi
exit 0
