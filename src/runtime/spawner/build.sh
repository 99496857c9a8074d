#!/bin/sh
# Builds trellis-spawner (not setuid).
#   build.sh [outdir]  (default: <repo>/dist/src/runtime/spawner)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
exec sh "$repo/scripts/build-c" "$here/trellis-spawner.c" "${1:-$repo/dist/src/runtime/spawner}/trellis-spawner"
