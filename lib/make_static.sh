#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# make_static.sh OUT.a INTERNAL.a OBJCOPY AR CC...
# Builds libm2mvpn.a from the internal static library: all its objects linked
# into one relocatable object (cc -r), then every hidden symbol made local
# (objcopy --localize-hidden). What stays global is what the shared library
# exports: the m2mvpn_* functions (M2MVPN_API, default visibility).
set -eu
out=$1 in=$2 objcopy=$3 ar=$4
shift 4
obj=${out%.a}.o
rm -f "$out" "$obj"
"$@" -r -nostdlib -o "$obj" -Wl,--whole-archive "$in" -Wl,--no-whole-archive
"$objcopy" --localize-hidden "$obj"
"$ar" rcs "$out" "$obj"
rm -f "$obj"
