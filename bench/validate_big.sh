#!/bin/sh
# Benchmark: `optimizely-offline validate` over a 1,000,000-line NDJSON file of
# valid orders. Prints orders/s and peak RSS against the targets
# (>= 200,000 orders/s, < 64 MiB).
#
#   sh bench/validate_big.sh [LINES [LUA]]        (defaults 1000000 lua5.4)
#   SHAPE=minimal sh bench/validate_big.sh        (one item, no attributes)
#
# SHAPE=mixed (default): 1-3 items with prices in cents, lang, user, a store
# attribute, ~280 bytes a line; SHAPE=minimal: the spec's minimal order with
# one item, ~190 bytes. The file is generated once into build/bench/ (280 MB
# for 1M mixed orders) and reused; KEEP=0 deletes it afterwards.
set -eu
cd "$(dirname "$0")/.."
LINES=${1:-1000000}
LUA=${2:-lua5.4}
DIR=build/bench
SHAPE=${SHAPE:-mixed}
case $SHAPE in mixed|minimal) ;; *) echo "SHAPE must be mixed or minimal" >&2; exit 2 ;; esac
FILE=$DIR/orders-$SHAPE-$LINES.ndjson
mkdir -p "$DIR"

if [ ! -s "$FILE" ]; then
  echo "generating $FILE ($LINES orders)..."
  # Varied but valid orders: 1-3 items, prices with cents, some attributes.
  "$LUA" - "$FILE" "$LINES" "$SHAPE" <<'EOF'
local path, n, shape = arg[1], tonumber(arg[2]), arg[3]
local f = assert(io.open(path .. ".tmp", "wb"))
local fmt = string.format
local buf, k = {}, 0
for i = 1, n do
  if shape == "minimal" then
    k = k + 1
    buf[k] = fmt('{"user":{"id":"cust-%d"},"order":{"refCode":"ord-%d","orderDate":'
      .. '"2024-%02d-%02dT%02d:%02d:00 GMT","currency":"GBP","total":%d.50,'
      .. '"items":[{"refCode":"sku-%d","qty":1,"price":%d.50}]}}\n',
      i % 100000, i, i % 12 + 1, i % 28 + 1, i % 24, i % 60, i % 500, i % 5000, i % 500)
  else
  local items, sum = {}, 0
  for j = 1, i % 3 + 1 do
    local cents = (i * 7 + j * 13) % 10000
    local qty = j
    sum = sum + cents * qty
    items[j] = fmt('{"refCode":"sku-%d","qty":%d,"price":%d.%02d}', (i + j) % 5000, qty,
      math.floor(cents / 100), cents % 100)
  end
  k = k + 1
  buf[k] = fmt('{"lang":"en-gb","user":{"id":"cust-%d"},"order":{"refCode":"ord-%d",'
    .. '"orderDate":"2024-%02d-%02dT%02d:%02d:00 GMT","currency":"GBP","total":%d.%02d,'
    .. '"items":[%s],"attributes":{"store":"store-%d"}}}\n',
    i % 100000, i, i % 12 + 1, i % 28 + 1, i % 24, i % 60, math.floor(sum / 100), sum % 100,
    table.concat(items, ","), i % 200)
  end
  if k == 4096 then f:write(table.concat(buf)); buf, k = {}, 0 end
end
f:write(table.concat(buf, "", 1, k))
f:close()
assert(os.rename(path .. ".tmp", path))
EOF
fi

BYTES=$(wc -c <"$FILE")
TIMEF=$(mktemp)
OUT=$(mktemp)
trap 'rm -f "$TIMEF" "$OUT"' EXIT
echo "$LUA bin/optimizely-offline validate -q $FILE  ($LINES $SHAPE orders, $BYTES bytes)"
rc=0
/usr/bin/time -v -o "$TIMEF" "$LUA" bin/optimizely-offline validate -q "$FILE" >"$OUT" 2>&1 || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "validate failed (exit $rc):"; head -n 20 "$OUT"; exit 1
fi
# "Elapsed (wall clock) time (h:mm:ss or m:ss): 0:04.12"
secs=$(sed -n 's/.*Elapsed (wall clock) time.*: //p' "$TIMEF" | awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s }')
rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$TIMEF")
cpu=$(sed -n 's/.*User time (seconds): //p' "$TIMEF")
awk -v n="$LINES" -v s="$secs" -v r="$rss" -v u="$cpu" 'BEGIN {
  rate = n / s; mib = r / 1024
  printf "%.2f s wall (%.2f s user): %.0f orders/s (target >= 200000: %s), peak RSS %.1f MiB (target < 64: %s)\n",
    s, u, rate, (rate >= 200000 ? "met" : "NOT met"), mib, (mib < 64 ? "met" : "NOT met")
}'
[ "${KEEP:-1}" = 1 ] || rm -f "$FILE"
