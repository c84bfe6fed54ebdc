#!/usr/bin/env bash
# `make e2e`: installs what is missing (Debian's chromium; the npm packages pinned by
# package-lock.json), builds the Next.js app in app/ when its sources changed, then runs run.mjs
# against the etls-proxy and etls-demo binaries in the directory $1 (default target/debug).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(cd "${1:-$here/../target/debug}" && pwd)"
cd "$here"
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

if [ ! -x /usr/bin/chromium ]; then
  echo "e2e: installing chromium (Debian)"
  $sudo timeout 600 apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive timeout 1200 apt-get install -y -qq chromium
fi
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 9) ? 0 : 1)' 2>/dev/null; then
  echo "e2e: needs Node.js 20.9 or later (Next.js 16), found: $(node --version 2>&1 || echo none)" >&2
  exit 2
fi

# Install from the lockfile whenever it differs from the one node_modules was installed from;
# `npm install --no-save` installs the locked versions and leaves the lockfile be.
if ! cmp -s package-lock.json node_modules/.e2e-installed-lock 2>/dev/null; then
  echo "e2e: npm install (versions from package-lock.json)"
  timeout 900 npm install --no-save --no-audit --no-fund --loglevel=error
  cp package-lock.json node_modules/.e2e-installed-lock
fi

export NEXT_TELEMETRY_DISABLED=1
if [ ! -f app/.next/BUILD_ID ] || [ package-lock.json -nt app/.next/BUILD_ID ] ||
  [ -n "$(find app -path app/.next -prune -o -type f -newer app/.next/BUILD_ID -print -quit)" ]; then
  echo "e2e: next build"
  timeout 900 node node_modules/next/dist/bin/next build app
fi

E2E_BIN="$bin" timeout 600 node run.mjs
