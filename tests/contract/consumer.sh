#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Install into a scratch root, build consumer.c with pkg-config against the
# installed header and library, run it, and check that only m2mvpn_* is exported.
# Then move the installed tree elsewhere (m2mvpn.pc is relocatable: its paths
# follow its own location), link consumer.c statically with
# `pkg-config --static --libs m2mvpn` against libm2mvpn.a, and run that too.
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
soname=$(readelf -d "$lib" | grep SONAME || true)  # not grep -q: SIGPIPE under pipefail
[[ $soname == *'[libm2mvpn.so.1]'* ]] || { echo "SONAME is not libm2mvpn.so.1: $soname"; exit 1; }
others=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRVW]$/ {print $3}' | grep -v '^m2mvpn_' || true)
if [ -n "$others" ]; then
    echo "exported symbols outside m2mvpn_*:"; echo "$others"; exit 1
fi
echo "exports: $(nm -D --defined-only "$lib" | grep -c ' T m2mvpn_') m2mvpn_* functions, nothing else"

# --- static, from a relocated tree
unset PKG_CONFIG_SYSROOT_DIR
prefix=$(realpath "$(pkg-config --variable=prefix m2mvpn)")
pcdir=$(realpath "$(dirname "$pc")")
case $pcdir in "$prefix"/*) ;; *) echo "m2mvpn.pc is not relocatable: its prefix $prefix is not the tree it was installed in ($pcdir)"; exit 1 ;; esac
moved=$root/relocated
mv "$prefix" "$moved"
export PKG_CONFIG_PATH=$moved/${pcdir#"$prefix"/}
[ "$(realpath "$(pkg-config --variable=prefix m2mvpn)")" = "$moved" ] ||
    { echo "m2mvpn.pc does not follow its tree: prefix $(pkg-config --variable=prefix m2mvpn)"; exit 1; }
archive=$(find "$moved" -name libm2mvpn.a | head -n1)
[ -n "$archive" ] || { echo "libm2mvpn.a was not installed"; exit 1; }
others=$(nm -g --defined-only "$archive" | awk 'NF == 3 {print $3}' | grep -v '^m2mvpn_' || true)
if [ -n "$others" ]; then
    echo "libm2mvpn.a has global symbols outside m2mvpn_* (they could clash with the program's):"
    echo "$others" | head -n 20; exit 1
fi
# -static: every library from its archive, as in a firmware image. glibc's
# linker notes about getaddrinfo/dlopen in static programs are expected.
static=$root/consumer-static
if ! cc -std=c11 -Wall -Wextra -Werror $(pkg-config --cflags m2mvpn) "$src/consumer.c" \
        -o "$static" -static $(pkg-config --static --libs m2mvpn) 2>"$root/link.log"; then
    cat "$root/link.log"; echo "static link with pkg-config --static --libs m2mvpn failed"; exit 1
fi
needed=$(readelf -d "$static" | grep NEEDED || true)
[ -z "$needed" ] || { echo "the static consumer still needs shared libraries:"; echo "$needed"; exit 1; }
linked=$(nm "$static" | grep -c ' T m2mvpn_' || true)
[ "$linked" -gt 0 ] || { echo "no m2mvpn_* function is linked into the static consumer"; exit 1; }
find "$moved" -name 'libm2mvpn.so*' -delete   # nothing to fall back on
out=$(env -u LD_LIBRARY_PATH "$static")
echo "$out"
want=$(pkg-config --modversion m2mvpn)
[ "$out" = "consumer: ok (library $want)" ] || { echo "static consumer: expected library $want"; exit 1; }
echo "static: $linked m2mvpn_* functions linked from libm2mvpn.a through the relocated m2mvpn.pc, no shared library needed"
