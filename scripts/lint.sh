#!/bin/sh
# make lint (CI runs it too):
#   - luacheck (.luacheckrc) over lua/ spec/ bench/ examples/ scripts/ and the
#     command. It fails on a warning in any file not listed in KNOWN below:
#     the files that had warnings when lint was added. Clean files stay clean;
#     a file's owner clears its warnings and deletes its line here.
#     LINT_STRICT=1 (or --strict) fails on every warning: turn it on once
#     KNOWN is empty.
#   - clang-format --dry-run (.clang-format) over csrc/: report only (the C
#     sources were written before .clang-format); CLANG_FORMAT_STRICT=1 fails.
set -u
cd "$(dirname "$0")/.."
STRICT=${LINT_STRICT:-0}
[ "${1:-}" = --strict ] && STRICT=1

KNOWN="
lua/optimizely/offline/cli/common.lua
lua/optimizely/offline/cli/send.lua
lua/optimizely/offline/client.lua
lua/optimizely/offline/input/csv.lua
lua/optimizely/offline/input/ndjson.lua
lua/optimizely/offline/input/xml.lua
lua/optimizely/offline/ngx/queue.lua
lua/optimizely/offline/ngx/transport.lua
lua/optimizely/offline/sandbox.lua
lua/optimizely/offline/sandbox/handler.lua
spec/batch_spec.lua
spec/client_spec.lua
spec/encode_edge_spec.lua
spec/encode_spec.lua
spec/property_spec.lua
spec/sandbox_spec.lua
spec/spool_spec.lua
spec/support/nginx.lua
"
status=0

if ! command -v luacheck >/dev/null 2>&1; then
  echo "lint: luacheck not found (Debian: apt-get install lua-check)"; exit 1
fi
out=$(luacheck --formatter plain --codes lua spec bench examples scripts bin/optimizely-offline 2>&1)
if [ -n "$out" ]; then
  echo "$out"
  n=$(printf '%s\n' "$out" | wc -l)
  new=$(printf '%s\n' "$out" | cut -d: -f1 | sort -u | while read -r f; do
    printf '%s\n' "$KNOWN" | grep -qx "$f" || echo "$f"
  done)
  if [ "$STRICT" = 1 ]; then
    echo "lint: luacheck: $n warning(s) (strict)"; status=1
  elif [ -n "$new" ]; then
    echo "lint: luacheck: warnings in files that were clean:"; printf '  %s\n' $new; status=1
  else
    echo "lint: luacheck: $n warning(s), all in files listed in scripts/lint.sh KNOWN (not failing)"
  fi
else
  echo "lint: luacheck: clean"
fi

if command -v clang-format >/dev/null 2>&1; then
  files=$(ls csrc/*.c csrc/*.h)
  lines=0; dirty=""
  for f in $files; do
    n=$(clang-format --style=file "$f" | diff "$f" - | grep -c '^<')
    [ "$n" -eq 0 ] || { lines=$((lines + n)); dirty="$dirty $f($n)"; }
  done
  if [ $lines -eq 0 ]; then
    echo "lint: clang-format: csrc/ formatted"
  else
    echo "lint: clang-format: $lines line(s) would change:$dirty"
    echo "      (see one: clang-format --dry-run csrc/FILE.c; report only unless CLANG_FORMAT_STRICT=1)"
    [ "${CLANG_FORMAT_STRICT:-0}" = 1 ] && status=1
  fi
else
  echo "lint: clang-format not found (Debian: apt-get install clang-format): C not checked"
fi
exit $status
