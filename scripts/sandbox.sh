#!/bin/sh
# The test suite's shared sandbox (real nginx over TLS on 127.0.0.1).
#   eval "$(sh scripts/sandbox.sh start)"   exports OO_SANDBOX_INFO for the specs
#   sh scripts/sandbox.sh stop
set -eu
cd "$(dirname "$0")/.."
DIR=${OO_SANDBOX_DIR:-$(pwd)/build/sandbox}
export LUA_PATH_5_4="$(pwd)/lua/?.lua;$(pwd)/lua/?/init.lua;;"
case "${1:-}" in
  start)
    # a second channel with its own token: the specs send mixed-channel runs
    lua5.4 bin/optimizely-offline sandbox start --dir "$DIR" --port 0 --channel-token callcentre=sandbox-cc-token >&2
    echo "export OO_SANDBOX_INFO='$DIR/sandbox.info'"
    ;;
  stop)
    lua5.4 bin/optimizely-offline sandbox stop --dir "$DIR" >&2 || true
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
