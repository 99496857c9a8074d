#!/bin/sh
# Builds the setuid CNI gate: build.sh [outdir]  (default: <repo>/dist/plugins/networker/gate)
# Installing it (root:root, mode 4755) is `gdn setup`'s job, not this script's.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
out=${1:-$repo/dist/plugins/networker/gate}
mkdir -p "$out"
CC=${CC:-gcc}
$CC -std=c11 -O2 -Wall -Wextra -Werror -Wformat=2 -Wconversion \
  -D_FORTIFY_SOURCE=2 -D_GNU_SOURCE \
  -fstack-protector-strong -fstack-clash-protection -fcf-protection -fPIE -pie \
  -Wl,-z,relro,-z,now,-z,noexecstack \
  -o "$out/cni-gate.tmp" "$here/cni-gate.c"
mv -f "$out/cni-gate.tmp" "$out/cni-gate"
echo "$out/cni-gate"
