#!/bin/sh
# The C core's layers (csrc/<layer>/, README "Layout"): a file includes
# headers of its own layer or of a layer before it in LAYERS, never after.
# Prints each include that goes the wrong way; exits 1 if there is one.
set -u
cd "$(dirname "$0")/.."
LAYERS="base identity payload input store delivery binding"
rank() { i=0; for l in $LAYERS; do [ "$l" = "$1" ] && { echo $i; return; }; i=$((i + 1)); done; echo 99; }
status=0
for f in csrc/*/*.c csrc/*/*.h; do
  layer=$(echo "$f" | cut -d/ -f2)
  r=$(rank "$layer")
  [ "$r" = 99 ] && { echo "$f: csrc/$layer is not a layer (scripts/layers.sh LAYERS)"; status=1; continue; }
  for h in $(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$f"); do
    target=$(ls csrc/*/"$h" 2>/dev/null | head -n 1)
    [ -n "$target" ] || continue
    hl=$(echo "$target" | cut -d/ -f2)
    if [ "$(rank "$hl")" -gt "$r" ]; then
      echo "$f includes $target: $layer may use only $(echo "$LAYERS" | sed "s/ $layer.*//")"
      status=1
    fi
  done
done
exit $status
