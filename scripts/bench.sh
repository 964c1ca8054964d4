#!/bin/sh
# make bench: every benchmark, each printing ratios against baselines measured
# in the same run. Load tests are bounded (counts and seconds) and use only
# 127.0.0.1.
set -eu
cd "$(dirname "$0")/.."
export LUA_PATH_5_4="$(pwd)/lua/?.lua;$(pwd)/lua/?/init.lua;;"
export LUA_PATH="$LUA_PATH_5_4"
for lua in lua5.4 luajit; do
  echo "==== $lua"
  $lua bench/encode.lua            # encoder vs cjson.encode
  $lua bench/send.lua              # sequential sends vs a C easy-handle client, curl CLI, LuaSec
  $lua bench/batch.lua             # send_batch vs a C curl-multi client, curl --parallel, wrk
  $lua bench/queue.lua             # push cost, spool throughput (single push x5, vs stalled delivery)
  $lua bench/spool_drain.lua       # delivery from a preloaded spool vs from memory
  $lua bench/spool.lua             # spool operations
  $lua bench/metrics.lua           # metrics on vs off: send_batch, push; nginx shared-dict cost
done
lua5.4 bench/latency.lua           # 30 ms round trip: vs in-flight/RTT, C multi, curl -Z; h1 and h2
lua5.4 bench/adaptive.lua          # adaptive limit vs a server answering 429 above N in progress
sh bench/validate_big.sh           # 1M-line NDJSON validate: orders/s and peak RSS
lua5.4 bench/hostile_files.lua     # hostile files: linear time (5/20/40 MB), peak RSS
lua5.4 bench/nginx_hook.lua        # wrk p99 with and without the log_by_lua hook
