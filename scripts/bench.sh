#!/bin/sh
# make bench: every benchmark, each printing ratios against its in-run baseline.
set -eu
cd "$(dirname "$0")/.."
for lua in lua5.4 luajit; do
  $lua bench/encode.lua
  echo
done
