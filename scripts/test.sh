#!/bin/sh
# The full suite (make test): every Lua build, the sandbox, sanitizers, valgrind.
# Prints one closing line: "test: N passed, N failed".
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
LOGDIR=$(mktemp -d)
trap 'sh scripts/sandbox.sh stop >/dev/null 2>&1; rm -rf "$LOGDIR"' EXIT INT TERM

make -s build VARIANTS="5.4 jit asan 5.1 5.3" || { echo "test: build failed"; echo "0 passed, 1 failed"; exit 1; }

# One shared sandbox (real nginx over TLS on loopback) for every network spec.
if [ -f scripts/sandbox.sh ]; then
  eval "$(sh scripts/sandbox.sh start)" || { echo "test: sandbox failed to start"; exit 1; }
fi

# busted --lua re-executes through a shell without quoting, so paths go in
# the environment, never on its command line.
LPATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;$ROOT/spec/?.lua;;"
status=0
suite() { # name, lua, cpath, [env...] -- runs busted and records its rc
  name=$1 lua=$2 cpath=$3; shift 3
  echo "== $name"
  env LUA_PATH="$LPATH" LUA_PATH_5_4="$LPATH" LUA_CPATH="$cpath" LUA_CPATH_5_4="$cpath" "$@" \
    busted --lua="$lua" -o utfTerminal spec >"$LOGDIR/$name.log" 2>&1
  rc=$?
  cat "$LOGDIR/$name.log"
  [ $rc -eq 0 ] || { echo "!! $name failed (exit $rc)"; status=1; }
}

suite lua5.4 lua5.4 "$ROOT/build/5.4/?.so;;"
suite luajit luajit "$ROOT/build/jit/?.so;;"
# The same C source under PUC Lua 5.1 and 5.3: the C-heavy specs.
for v in 5.1 5.3; do
  echo "== lua$v"
  env LUA_PATH="$LPATH" LUA_CPATH="$ROOT/build/$v/?.so;;" LUA_PATH_5_3="$LPATH" \
    LUA_CPATH_5_3="$ROOT/build/$v/?.so;;" \
    busted --lua="lua$v" -o utfTerminal spec/encode_spec.lua spec/encode_edge_spec.lua \
    spec/property_spec.lua spec/json_spec.lua spec/spool_spec.lua spec/ledger_spec.lua spec/retry_spec.lua \
    spec/cli_json_spec.lua spec/cli_dates_spec.lua spec/input_csv_spec.lua \
    spec/money_spec.lua spec/input_encoding_spec.lua \
    >"$LOGDIR/lua$v.log" 2>&1 || { echo "!! lua$v failed"; status=1; }
  tail -n 1 "$LOGDIR/lua$v.log"
done
# AddressSanitizer + UBSan build of the C core, run by a small lua5.4
# interpreter linked with the sanitizers (scripts/asan-lua.c) — not by
# LD_PRELOAD, which would leak into every curl/nginx a spec starts.
# Leak checking is off (busted exits without closing the state); any memory
# error or UB aborts the run (halt_on_error, no UB recovery).
ASAN_LUA=build/asan-lua
if [ ! -x "$ASAN_LUA" ] || [ scripts/asan-lua.c -nt "$ASAN_LUA" ]; then
  gcc -O1 -g -fsanitize=address,undefined -I/usr/include/lua5.4 scripts/asan-lua.c \
    -o "$ASAN_LUA" -llua5.4 -lm -ldl
fi
echo "== asan"
env LUA_PATH_5_4="$LPATH" LUA_CPATH_5_4="$ROOT/build/asan/?.so;;" \
  ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 OO_PROPERTY_SCALE=0.2 OO_LUA="$ROOT/$ASAN_LUA" OO_BUILD=asan \
  "$ASAN_LUA" /usr/bin/busted -o utfTerminal spec >"$LOGDIR/asan.log" 2>&1
rc=$?
cat "$LOGDIR/asan.log"
[ $rc -eq 0 ] || { echo "!! asan failed (exit $rc)"; status=1; }

# valgrind over the encoder specs (the network specs are covered by ASan).
echo "== valgrind"
if env LUA_PATH_5_4="$LPATH" LUA_CPATH_5_4="$ROOT/build/5.4/?.so;;" \
     valgrind -q --error-exitcode=99 --leak-check=no --track-origins=no \
     lua5.4 /usr/bin/busted -o utfTerminal \
     spec/encode_spec.lua $(ls spec/encode_edge_spec.lua 2>/dev/null) >"$LOGDIR/valgrind.log" 2>&1; then
  cat "$LOGDIR/valgrind.log"
else
  cat "$LOGDIR/valgrind.log"; echo "!! valgrind reported errors"; status=1
fi

# The fault run, bounded: 1,000 orders through a spool while the sandbox
# answers 503, closes connections and is stopped; the pusher is kill -9ed
# and restarted. Every order must end in the sandbox or the dead letters.
echo "== fault run (quick)"
if env LUA_PATH_5_4="$LPATH" LUA_CPATH_5_4="$ROOT/build/5.4/?.so;;" \
     lua5.4 bench/fault_run.lua --orders 1000 --quick >"$LOGDIR/fault.out" 2>&1; then
  tail -n 1 "$LOGDIR/fault.out"
else
  tail -n 30 "$LOGDIR/fault.out"; echo "!! fault run lost orders"; status=1
fi

# A bounded libFuzzer run over the C parsers (dates, money, UTF-8, escaping, CSV,
# the input decoder, the ledger's body reader), the pseudonymiser (normalisation +
# HMAC) and the metric labels (classify -> metrics -> Prometheus text).
echo "== fuzz"
if command -v clang >/dev/null 2>&1; then
  if make -s -C fuzz run FUZZ_SECONDS="${FUZZ_SECONDS:-15}" >"$LOGDIR/fuzz.out" 2>&1 &&
     make -s -C fuzz run-json FUZZ_SECONDS="${FUZZ_SECONDS:-15}" >>"$LOGDIR/fuzz.out" 2>&1 &&
     make -s -C fuzz run-classify FUZZ_SECONDS="${FUZZ_SECONDS:-15}" >>"$LOGDIR/fuzz.out" 2>&1 &&
     make -s -C fuzz run-hmac FUZZ_SECONDS="${FUZZ_SECONDS:-15}" >>"$LOGDIR/fuzz.out" 2>&1 &&
     make -s -C fuzz run-tz FUZZ_SECONDS="${FUZZ_SECONDS:-15}" >>"$LOGDIR/fuzz.out" 2>&1 &&
     make -s -C fuzz run-csv FUZZ_SECONDS="${FUZZ_SECONDS:-15}" >>"$LOGDIR/fuzz.out" 2>&1 &&
     make -s -C fuzz run-decode FUZZ_SECONDS="${FUZZ_SECONDS:-15}" >>"$LOGDIR/fuzz.out" 2>&1 &&
     make -s -C fuzz run-ledger FUZZ_SECONDS="${FUZZ_SECONDS:-15}" >>"$LOGDIR/fuzz.out" 2>&1 &&
     make -s -C fuzz run-labels FUZZ_SECONDS="${FUZZ_SECONDS:-15}" >>"$LOGDIR/fuzz.out" 2>&1; then
    tail -n 2 "$LOGDIR/fuzz.out"
  else
    tail -n 40 "$LOGDIR/fuzz.out"; echo "!! fuzzer found a failure"; status=1
  fi
fi

# Tally busted's "N successes / N failures / N errors" lines (colours stripped).
passed=0; failed=0
for f in "$LOGDIR"/*.log; do
  counts=$(sed 's/\x1b\[[0-9;]*m//g' "$f" | grep -aE '[0-9]+ successes? / [0-9]+ failures? / [0-9]+ errors?' | tail -n 1 |
    sed -E 's/.*[^0-9]([0-9]+) successes? \/ ([0-9]+) failures? \/ ([0-9]+) errors?.*/\1 \2 \3/; s/^([0-9]+) successes? \/ ([0-9]+) failures? \/ ([0-9]+) errors?.*/\1 \2 \3/')
  if [ -z "$counts" ]; then failed=$((failed + 1)); continue; fi
  set -- $counts
  passed=$((passed + $1)); failed=$((failed + $2 + $3))
done
[ $failed -eq 0 ] || status=1
echo "test: $passed passed, $failed failed"
exit $status
