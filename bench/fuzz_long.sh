#!/bin/sh
# Long libFuzzer runs: every target in fuzz/ for at least RUNS executions
# (default 10,000,000), or, for a target with a time in TARGETS (fuzz_csv:
# its Lua side makes 10M executions days long), for that many seconds
# (MINUTES overrides them all); one after the other, each from its seeds
# plus the corpus earlier runs left. Prints one line per target
# (executions, seconds, executions/s, ok or FAILED) and exits 1 if any
# target found a failure (its crash-* file stays in fuzz/).
#
#   sh bench/fuzz_long.sh [RUNS] [TARGET...]     e.g. sh bench/fuzz_long.sh 1000000 fuzz_csv
#   nice -n 19 sh bench/fuzz_long.sh             on a shared machine
#
# `make test` runs each target for seconds; this is the long run. At ~1,000
# to ~50,000 executions a second per target, the full run takes hours: run
# it on a quiet machine, or under `nice`.
#
# Adding a target is one line in TARGETS: the binary (a rule of
# fuzz/Makefile), its corpus directory, its seeds directory, -max_len, and
# optionally seconds to run instead of RUNS executions.
set -u
cd "$(dirname "$0")/../fuzz"
RUNS=${1:-${RUNS:-10000000}}
[ $# -gt 0 ] && shift
ONLY="$*"

TARGETS='
fuzz_scalars   corpus           seeds            128
fuzz_json      corpus-json      seeds-json       4096
fuzz_hmac      corpus-hmac      seeds-hmac       512
fuzz_classify  corpus-classify  seeds-classify   4096
fuzz_tz        corpus-tz        seeds-tz         8192
fuzz_csv       corpus-csv       seeds-csv        4096   1800
fuzz_labels    corpus-labels    seeds-labels     4096
fuzz_decode    corpus-decode    seeds-decode     4096
fuzz_ledger    corpus-ledger    seeds-ledger     4096
'

command -v clang >/dev/null 2>&1 || { echo "fuzz_long: clang is needed (apt-get install -y clang)"; exit 2; }
status=0
echo "$TARGETS" | while read -r bin corpus seeds maxlen seconds; do
  [ -n "$bin" ] || continue
  case " $ONLY " in "  ") ;; *" $bin "*) ;; *) continue ;; esac
  if ! make -s "$bin" >/dev/null; then echo "$bin: build FAILED"; exit 1; fi
  mkdir -p "$corpus"
  cp "$seeds"/* "$corpus"/ 2>/dev/null || true
  log="$bin.long.log"
  start=$(date +%s)
  [ -n "${MINUTES:-}" ] && seconds=$((MINUTES * 60))
  if [ -n "${seconds:-}" ]; then limit="-max_total_time=$seconds"; else limit="-runs=$RUNS"; fi
  if ./"$bin" "$limit" -max_len="$maxlen" -print_final_stats=1 "$corpus" >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
  fi
  secs=$(( $(date +%s) - start ))
  [ "$secs" -gt 0 ] || secs=1
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  execs=${execs:-0}
  printf '%-14s %12s executions %8s s %10s/s  %s\n' "$bin" "$execs" "$secs" $((execs / secs)) "$result"
  if [ "$result" != ok ]; then
    grep -E "ERROR|fuzz_.*:|SUMMARY|crash-" "$log" | head -n 20
    exit 1
  fi
  [ -n "${seconds:-}" ] || [ "$execs" -ge "$RUNS" ] || { echo "$bin: fewer executions than asked"; exit 1; }
done || status=1
exit $status
