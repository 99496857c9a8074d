#!/bin/sh
# Builds conmon-attach (not setuid): build.sh [outdir]  (default: <repo>/dist/src/runtime/attach)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
out=${1:-$repo/dist/src/runtime/attach}
mkdir -p "$out"
CC=${CC:-gcc}
$CC -std=c11 -O2 -Wall -Wextra -Werror -Wformat=2 -Wconversion \
  -D_FORTIFY_SOURCE=2 -D_GNU_SOURCE \
  -fstack-protector-strong -fstack-clash-protection -fcf-protection -fPIE -pie \
  -Wl,-z,relro,-z,now,-z,noexecstack \
  -o "$out/conmon-attach.tmp" "$here/conmon-attach.c"
mv -f "$out/conmon-attach.tmp" "$out/conmon-attach"
echo "$out/conmon-attach"
