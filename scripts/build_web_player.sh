#!/usr/bin/env bash
# Builds gshead's animated-export player (`gshead view DIR`, gshead/web/player/): npm installs
# its pinned packages (gshead/web/player/package-lock.json: three, @sparkjsdev/spark, esbuild;
# all MIT) into a cache folder, never into the repository, and bundles gshead/web/player/player.js
# with them into ONE file, gshead/web/player/dist/player.js (git-ignored), that `gshead view`
# serves from 127.0.0.1: nothing comes from a CDN at run time.
#
# Cache: $GSHEAD_NPM_PLAYER_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/gshead/npm-web-player.
# Idempotent: the bundle is rebuilt only when player.js or the lock file changed (dist/.stamp).
# Exits 0 with a note when node/npm or the registry is not there (the player's browser test is
# then skipped and `gshead view DIR` says the bundle is missing); exits 1 if esbuild fails.
set -uo pipefail
player="$(cd "$(dirname "$0")/.." && pwd)/gshead/web/player"
cache="${GSHEAD_NPM_PLAYER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gshead/npm-web-player}"
out="$player/dist/player.js"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "note: node/npm not installed; the web player (gshead view DIR) was not built"
  exit 0
fi
stamp="$(cat "$player/player.js" "$player/package-lock.json" | sha256sum | cut -c1-16)"
if [ -f "$out" ] && [ "$(cat "$player/dist/.stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0  # already built from these sources
fi
if ! { [ -f "$cache/.installed" ] && cmp -s "$player/package-lock.json" "$cache/package-lock.json"; }; then
  mkdir -p "$cache" && rm -f "$cache/.installed"
  cp "$player/package.json" "$player/package-lock.json" "$cache/"
  if (cd "$cache" && npm ci --no-audit --no-fund --ignore-scripts --fetch-retries=2 \
        --fetch-retry-mintimeout=2000 --fetch-retry-maxtimeout=10000 >/dev/null 2>&1); then
    echo ok > "$cache/.installed"
  else
    echo "note: npm ci of the web player's packages failed (no registry?); the player was not built"
    exit 0
  fi
fi
mkdir -p "$cache/src" "$player/dist"
cp "$player/player.js" "$cache/src/player.js"
tmp="$player/dist/.player.js.$$.partial"
if ! (cd "$cache" && ./node_modules/.bin/esbuild src/player.js --bundle --format=esm --minify \
        --legal-comments=eof --log-level=error "--outfile=$tmp"); then
  rm -f "$tmp"
  echo "error: esbuild failed to bundle gshead/web/player/player.js" >&2
  exit 1
fi
mv -f "$tmp" "$out" && echo "$stamp" > "$player/dist/.stamp"
echo "built $out ($(wc -c < "$out") bytes)"
exit 0
