#!/bin/sh
# make lint (CI runs it too):
#   - luacheck (.luacheckrc) over lua/ spec/ bench/ examples/ scripts/ and the
#     command. It fails on a warning in any file not listed in KNOWN below
#     (empty: every file is clean). LINT_STRICT=1 (or --strict), as CI runs
#     it, fails on every warning, KNOWN or not.
#   - scripts/require_check.lua over lua/ and the command: no `require`
#     inside a function body unless it is an optional dependency, marked
#     with a comment tag `optional-require: why` on its line, called as
#     `pcall(require, ...)`, or listed in scripts/optional_requires.txt
#     (`FILE MODULE` a line); and no circle between modules. Always fails
#     on a finding, strict or not.
#   - scripts/layers.sh: csrc/'s layer folders only include their own or
#     earlier layers' headers.
#   - clang-format (.clang-format) over csrc/: it fails on any C file
#     clang-format would change (format with `clang-format -i csrc/*/*.[ch]`).
set -u
cd "$(dirname "$0")/.."
STRICT=${LINT_STRICT:-0}
[ "${1:-}" = --strict ] && STRICT=1

KNOWN=""
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

# Requires at the top, no circle between modules (see the header).
# shellcheck disable=SC2046
if out=$(lua5.4 scripts/require_check.lua --allow scripts/optional_requires.txt \
    $(find lua -name '*.lua' | sort) bin/optimizely-offline); then
  echo "lint: requires: at the top of every module, no circle"
else
  echo "$out"
  echo "lint: requires: $(printf '%s\n' "$out" | wc -l) finding(s)"; status=1
fi

# The C layers: no include from a later layer (scripts/layers.sh).
if out=$(sh scripts/layers.sh); then
  echo "lint: C layers: every include goes down (base identity payload input store delivery binding)"
else
  echo "$out"; status=1
fi

if command -v clang-format >/dev/null 2>&1; then
  files=$(ls csrc/*/*.c csrc/*/*.h)
  unformatted=""
  for f in $files; do
    n=$(clang-format --style=file "$f" | diff "$f" - | grep -c '^<')
    [ "$n" -eq 0 ] || unformatted="$unformatted $f($n)"
  done
  if [ -z "$unformatted" ]; then
    echo "lint: clang-format: csrc/ formatted"
  else
    echo "lint: clang-format: files that must be formatted (clang-format -i FILE; see clang-format --dry-run FILE):$unformatted"
    status=1
  fi
else
  echo "lint: clang-format not found (Debian: apt-get install clang-format): C not checked"
  [ "$STRICT" = 1 ] && status=1
fi
exit $status
