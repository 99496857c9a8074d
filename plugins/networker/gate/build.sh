#!/bin/sh
# Builds the setuid CNI gate. Installing it (root:root, mode 4755) is `gdn setup`'s job, not this script's.
#   build.sh [outdir]  (default: <repo>/dist/plugins/networker/gate)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
exec sh "$repo/scripts/build-c" "$here/cni-gate.c" "${1:-$repo/dist/plugins/networker/gate}/cni-gate" "$here/quota.c"
