#!/usr/bin/env bash
# `make run`: the demo app and auth API, the proxy in front of them, and three curl lines.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/debug
# Demo secrets only: use your own (at least 32 bytes each) anywhere else.
export ETLS_ACCESS="${ETLS_ACCESS:-demo-access-secret-not-for-production-0001}"
export ETLS_REFRESH="${ETLS_REFRESH:-demo-refresh-secret-not-for-production-001}"
export RUST_LOG="${RUST_LOG:-info}"

"$bin/etls-proxy" -t -c conf/etls-proxy.yaml
"$bin/etls-demo" serve --app 127.0.0.1:3000 --auth 127.0.0.1:3001 &
demo=$!
"$bin/etls-proxy" -c conf/etls-proxy.yaml &
proxy=$!
trap 'kill $demo $proxy 2>/dev/null || true' EXIT INT TERM

for _ in $(seq 1 100); do
  if (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; then break; fi
  sleep 0.1
done
echo
echo "etls-proxy is on http://127.0.0.1:8080 in front of the demo app (127.0.0.1:3000)."
echo "Try these (Ctrl-C stops everything):"
echo
"$bin/etls-demo" curl-lines --proxy 127.0.0.1:8080
echo
wait "$proxy"
