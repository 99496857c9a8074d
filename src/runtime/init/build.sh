#!/bin/sh
# Builds garden-init, every container's pid 1 and its processes' launcher: build.sh [outdir]
# (default: <repo>/dist/src/runtime/init). Static, so it runs in any image, libc or not.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
out=${1:-$repo/dist/src/runtime/init}
mkdir -p "$out"
CC=${CC:-gcc}
$CC -std=c11 -O2 -Wall -Wextra -Werror -Wformat=2 -Wconversion \
  -D_FORTIFY_SOURCE=2 -D_GNU_SOURCE \
  -fstack-protector-strong -fstack-clash-protection -fcf-protection -fPIE -static-pie -s \
  -Wl,-z,relro,-z,now,-z,noexecstack \
  -o "$out/garden-init.tmp" "$here/garden-init.c"
mv -f "$out/garden-init.tmp" "$out/garden-init"
echo "$out/garden-init"
