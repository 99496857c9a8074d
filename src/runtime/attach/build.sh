#!/bin/sh
# Builds conmon-attach (not setuid).
#   build.sh [outdir]  (default: <repo>/dist/src/runtime/attach)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
exec sh "$repo/scripts/build-c" "$here/conmon-attach.c" "${1:-$repo/dist/src/runtime/attach}/conmon-attach"
