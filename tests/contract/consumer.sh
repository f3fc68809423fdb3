#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Install into a scratch root, build consumer.c with pkg-config against the
# installed header and library, run it, and check that only m2mvpn_* is exported.
set -euo pipefail
build=$1 src=$2
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
meson install -C "$build" --destdir "$root" --no-rebuild --quiet >/dev/null
pc=$(find "$root" -name m2mvpn.pc | head -n1)
[ -n "$pc" ] || { echo "m2mvpn.pc was not installed"; exit 1; }
export PKG_CONFIG_PATH=$(dirname "$pc") PKG_CONFIG_SYSROOT_DIR=$root
cc -std=c11 -Wall -Wextra -Werror $(pkg-config --cflags m2mvpn) "$src/consumer.c" \
   -o "$root/consumer" $(pkg-config --libs m2mvpn)
lib=$(find "$root" -name 'libm2mvpn.so.1' | head -n1)
LD_LIBRARY_PATH=$(dirname "$lib") "$root/consumer"
readelf -d "$lib" | grep -q 'SONAME.*\[libm2mvpn.so.1\]' || { echo "SONAME is not libm2mvpn.so.1"; exit 1; }
others=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRVW]$/ {print $3}' | grep -v '^m2mvpn_' || true)
if [ -n "$others" ]; then
    echo "exported symbols outside m2mvpn_*:"; echo "$others"; exit 1
fi
echo "exports: $(nm -D --defined-only "$lib" | grep -c ' T m2mvpn_') m2mvpn_* functions, nothing else"
