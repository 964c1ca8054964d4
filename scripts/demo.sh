#!/bin/sh
# make demo: start the local sandbox (real nginx over TLS on 127.0.0.1), run
# the examples against it — the library (examples/demo.lua) and the command
# line (send a till CSV with a transform, then a legacy XML file) — and stop
# the sandbox again, whatever happens. Expects `make build` to have run.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DIR="$ROOT/build/demo-sandbox"
export LUA_PATH_5_4="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;;"
export LUA_CPATH_5_4="$ROOT/build/5.4/?.so;;"
OO="lua5.4 bin/optimizely-offline"

step() { printf '\n==== %s\n' "$*"; }

stop_sandbox() { $OO sandbox stop --dir "$DIR" >/dev/null 2>&1 || true; }
trap 'stop_sandbox' EXIT
trap 'stop_sandbox; exit 130' INT TERM

step "starting the sandbox"
$OO sandbox start --dir "$DIR" --port 0 || { echo "demo: the sandbox did not start" >&2; exit 1; }

# Credentials for the sandbox, from the file it wrote (its token is a fixed,
# non-secret test value; it is never printed below either).
info() { sed -n "s/^$1=//p" "$DIR/sandbox.info"; }
OPTIMIZELY_SITE=$(info site)
OPTIMIZELY_SITE_TOKEN=$(info token)
OPTIMIZELY_CHANNEL=$(info channel)
OPTIMIZELY_BASE_URL=$(info base_url)
OPTIMIZELY_CA_FILE=$(info ca_file)
export OPTIMIZELY_SITE OPTIMIZELY_SITE_TOKEN OPTIMIZELY_CHANNEL OPTIMIZELY_BASE_URL OPTIMIZELY_CA_FILE
# examples/transform.lua pseudonymises e-mails with this key; a fixed demo
# value here, a secret of your own (e.g. `openssl rand -hex 32`) in production
export OPTIMIZELY_PSEUDONYM_KEY="${OPTIMIZELY_PSEUDONYM_KEY:-demo-pseudonym-key-not-a-secret}"

# a clean record for this run
curl -sS --cacert "$OPTIMIZELY_CA_FILE" -X POST "$OPTIMIZELY_BASE_URL/_sandbox/reset" >/dev/null

status=0
step "lua5.4 examples/demo.lua: encode and send the example orders one by one"
lua5.4 examples/demo.lua || status=1

step "optimizely-offline send examples/till-export.csv --transform examples/transform.lua"
rm -f build/demo-report.json build/demo-rejects.ndjson
$OO send examples/till-export.csv --transform examples/transform.lua \
  --report build/demo-report.json --rejects build/demo-rejects.ndjson || status=1
echo "-- build/demo-report.json:"
cat build/demo-report.json

step "optimizely-offline send examples/legacy-orders.xml"
$OO send examples/legacy-orders.xml || status=1

step "the sandbox recorded"
curl -sS --cacert "$OPTIMIZELY_CA_FILE" "$OPTIMIZELY_BASE_URL/_sandbox/stats"; echo

step "stopping the sandbox"
stop_sandbox
trap - EXIT
[ $status -eq 0 ] && echo "demo: ok" || echo "demo: FAILED" >&2
exit $status
