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
# Static as in a firmware image: every library `pkg-config --static --libs`
# names is taken from its archive (-Bstatic), so a library missing from the
# list shows as an undefined reference. Where the system ships no archive
# (Debian has no libtss2-*.a), that library alone is linked shared; the
# program must then need nothing else. glibc's linker notes about
# getaddrinfo/dlopen in static programs are expected.
static=$root/consumer-static
libdirs=$(cc -print-search-dirs | sed -n 's/^libraries: =//p' | tr ':' ' ')
flags=() shared=()
for f in $(pkg-config --static --libs m2mvpn); do
    case $f in
    -L*) libdirs="${f#-L} $libdirs"; flags+=("$f") ;;
    -l*) name=${f#-l}; found=
         for d in $libdirs; do [ -e "$d/lib$name.a" ] && { found=1; break; }; done
         if [ -n "$found" ] || [ "$name" = m2mvpn ]; then flags+=(-Wl,-Bstatic "$f")
         else flags+=(-Wl,-Bdynamic "$f"); shared+=("lib$name.so"); fi ;;
    *) flags+=("$f") ;;
    esac
done
if ! cc -std=c11 -Wall -Wextra -Werror $(pkg-config --cflags m2mvpn) "$src/consumer.c" \
        -o "$static" "${flags[@]}" -Wl,-Bdynamic 2>"$root/link.log"; then
    cat "$root/link.log"; echo "static link with pkg-config --static --libs m2mvpn failed"; exit 1
fi
needed=$(readelf -d "$static" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')
for n in $needed; do
    case " ${shared[*]} " in *" ${n%.so*}.so "*) continue ;; esac
    case $n in libc.so.*|libm.so.*|ld-linux*|libgcc_s.so.*) continue ;; esac
    echo "the static consumer needs $n, which pkg-config --static named with an archive"; exit 1
done
linked=$(nm "$static" | grep -c ' T m2mvpn_' || true)
[ "$linked" -gt 0 ] || { echo "no m2mvpn_* function is linked into the static consumer"; exit 1; }
find "$moved" -name 'libm2mvpn.so*' -delete   # nothing to fall back on
out=$(env -u LD_LIBRARY_PATH "$static")
echo "$out"
want=$(pkg-config --modversion m2mvpn)
[ "$out" = "consumer: ok (library $want)" ] || { echo "static consumer: expected library $want"; exit 1; }
echo "static: $linked m2mvpn_* functions linked from libm2mvpn.a through the relocated m2mvpn.pc; shared only where the system has no archive: ${shared[*]:-none}"
