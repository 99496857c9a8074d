#!/bin/sh
# Builds garden-init, every container's pid 1, its spawn server and its processes' launcher (static).
#   build.sh [outdir]  (default: <repo>/dist/src/runtime/init)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
exec sh "$repo/scripts/build-c" "$here/garden-init.c" "${1:-$repo/dist/src/runtime/init}/garden-init" static "$here/spawn-server.c"
