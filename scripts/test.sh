#!/bin/sh
# The suites (make test, make check, make asan, make valgrind):
#   sh scripts/test.sh [--lanes N] [SUITE...] [spec/FILE_spec.lua...]
# SUITE: lua5.4 luajit lua5.1 lua5.3 asan valgrind fault fuzz (none: all of them).
# Builds what the suites need, then scripts/test_lanes.lua runs every spec file
# of every suite as its own job in parallel lanes (own ports, TMPDIR, sandbox).
# Prints each suite's summary, failures in full, per-suite timings, and one
# closing line: "test: N passed, N failed".
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export PWD="$ROOT"
WORK=$(mktemp -d)
# On the way out (interrupted, or the runner failed): stop the jobs still
# running. Each runs in a process group of its own under `timeout`, which
# passes the signal on to the whole group.
cleanup() {
  pids=$(cat "$WORK/pids" 2>/dev/null)
  # shellcheck disable=SC2086
  [ -z "$pids" ] || kill -TERM $pids 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "test: interrupted"; exit 130' INT TERM HUP

suites="" variants=""
for a in "$@"; do
  case $a in
    lua5.4|valgrind|fault) variants="$variants 5.4" ;;
    luajit) variants="$variants jit" ;;
    lua5.1) variants="$variants 5.1" ;;
    lua5.3) variants="$variants 5.3" ;;
    asan) variants="$variants asan" ;;
    fuzz|--lanes|[0-9]*|*_spec.lua) ;;
    *) echo "test: unknown suite $a (lua5.4 luajit lua5.1 lua5.3 asan valgrind fault fuzz)" >&2; exit 2 ;;
  esac
  case $a in lua*|asan|valgrind|fault|fuzz) suites="$suites $a" ;; esac
done
# spec files alone: the five Lua suites, over those files
[ -n "$suites" ] || variants="5.4 jit asan 5.1 5.3"

t0=$(date +%s)
# shellcheck disable=SC2086
variants=$(printf '%s\n' $variants | sort -u | xargs)
if [ -n "$variants" ]; then
  make -s build VARIANTS="$variants" || { echo "test: build failed"; echo "test: 0 passed, 1 failed"; exit 1; }
fi

# The ASan interpreter: lua5.4 linked with the sanitizers (scripts/asan-lua.c).
ASAN_LUA=build/asan-lua
case " $variants " in *" asan "*)
  if [ ! -x "$ASAN_LUA" ] || [ scripts/asan-lua.c -nt "$ASAN_LUA" ]; then
    gcc -O1 -g -fsanitize=address,undefined -I/usr/include/lua5.4 scripts/asan-lua.c \
      -o "$ASAN_LUA" -llua5.4 -lm -ldl || { echo "test: asan-lua failed to build"; exit 1; }
  fi ;;
esac

TEST_BUILD_SECONDS=$(( $(date +%s) - t0 )) lua5.4 scripts/test_lanes.lua --work "$WORK" "$@"
