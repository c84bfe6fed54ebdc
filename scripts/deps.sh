#!/usr/bin/env bash
# Installs what the build needs on a fresh Debian machine that has the Rust toolchain:
# cmake for Pingora's zlib-ng (and a C compiler, normally already there), openssl and curl for
# the TLS tests, redis-server for the shared-store tests; with `bench`, also
# wrk, nginx and nginx's njs module, h2load (nghttp2-client) for `make bench`'s TLS scenarios,
# and valgrind for `make bench-instructions`.
set -euo pipefail
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(gcc)
# The TLS tests make a certificate with openssl and speak HTTP/2 with curl.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
# The shared-store tests (refresh.store: redis) start their own redis-server.
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ "${1:-}" = bench ]; then
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
  command -v nginx >/dev/null 2>&1 || need+=(nginx)
  [ -e /usr/lib/nginx/modules/ngx_http_js_module.so ] || need+=(libnginx-mod-http-js)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
  # `make bench-instructions` counts instructions per request under callgrind.
  command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
fi
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "deps: installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi
