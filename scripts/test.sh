#!/bin/sh
# The suites (make test, make check, make asan, make valgrind):
#   sh scripts/test.sh [--lanes N] [SUITE...] [spec/FILE_spec.lua...]
# SUITE: lua5.4 luajit lua5.1 lua5.3 asan valgrind fault fuzz (none: all of
# them; spec files alone: the Lua suites over those files).
# scripts/test_lanes.lua builds the variants the suites need and runs every
# spec file of every suite as its own job in parallel lanes (own ports,
# TMPDIR, sandbox). It prints each suite's summary, failures in full, the
# per-suite timings, and one closing line: "test: N passed, N failed".
# Spec files (spec/*_spec.lua) and fuzz targets (fuzz/Makefile's run*) are
# found by themselves; the C-heavy specs of Lua 5.1 and 5.3 and the tests
# of the serial lane are listed in scripts/test_lanes.lua.
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

lua5.4 scripts/test_lanes.lua --work "$WORK" "$@"
