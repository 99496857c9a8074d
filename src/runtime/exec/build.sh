#!/bin/sh
# Builds trellis-exec, the runtime conmon runs for `run` in a container with a spawn server (not setuid).
#   build.sh [outdir]  (default: <repo>/dist/src/runtime/exec)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
exec sh "$repo/scripts/build-c" "$here/trellis-exec.c" "${1:-$repo/dist/src/runtime/exec}/trellis-exec"
