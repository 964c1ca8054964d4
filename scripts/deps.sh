#!/bin/sh
# Installs the Debian packages the project needs (as root), or prints the
# exact apt-get line to run (as anyone else). Every dependency is a Debian
# package: no luarocks.org, no downloads.
set -eu
PKGS="build-essential cmake pkg-config git ca-certificates openssl curl
lua5.1 liblua5.1-0-dev lua5.3 liblua5.3-dev lua5.4 liblua5.4-dev
luajit2 libluajit2-5.1-dev luarocks lua-busted lua-cjson lua-expat lua-argparse
lua-sec lua-socket libcurl4-openssl-dev libsqlite3-dev libssl-dev clang
nginx libnginx-mod-http-lua wrk valgrind
lua-ldoc lua-discount lua-check clang-format man-db groff-base
prometheus python3-prometheus-client"
missing=""
for p in $PKGS; do
  st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  case "$st" in *"install ok installed"*) ;; *) missing="$missing $p" ;; esac
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
  echo "deps: installing:$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || apt-get update
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
  echo "deps: missing Debian packages. Run as root:" >&2
  echo "  apt-get update && apt-get install -y$missing" >&2
  exit 1
fi
