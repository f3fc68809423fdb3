#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# abi.sh LIBRARY SYMBOL-LIST
# The shared library's ABI, checked against the committed list: the version
# node M2MVPN_1.0 is defined, every exported symbol carries a version node
# (name@@M2MVPN_x.y), and the exported name@@node pairs are exactly those of
# abi-symbols.txt. A change to that list must be deliberate.
set -euo pipefail
lib=$1 list=$2
fail() { echo "$*"; exit 1; }

# (grep -c, not -q: an early exit of grep would fail readelf with SIGPIPE)
nodes=$(readelf -V -W "$lib" | grep -c 'Name: M2MVPN_1\.0$' || true)
[ "$nodes" -ge 1 ] ||
    fail "$lib: no version node M2MVPN_1.0 (is lib/libm2mvpn.sym passed to the linker?)"

# Defined dynamic symbols; the ABS entries are the version nodes themselves,
# and LOCAL ones are section symbols (aarch64 ld puts .init and .data there).
exported=$(readelf --dyn-syms -W "$lib" |
    awk 'NR > 3 && $5 != "LOCAL" && $7 != "UND" && $7 != "ABS" && $8 != "" {print $8}' | LC_ALL=C sort)
[ -n "$exported" ] || fail "$lib: exports nothing"
unversioned=$(grep -v '@@M2MVPN_[0-9][0-9.]*$' <<<"$exported" || true)
[ -z "$unversioned" ] || fail "exported without an M2MVPN_x.y version node:
$unversioned"

expected=$(grep -v '^#' "$list" | grep -v '^$' | LC_ALL=C sort)
if [ "$exported" != "$expected" ]; then
    echo "exported symbols differ from $(basename "$list") (-: listed only, +: exported only):"
    diff <(echo "$expected") <(echo "$exported") | grep '^[<>]' | sed 's/^</-/; s/^>/+/'
    echo "If the ABI change is intended, update tests/contract/abi-symbols.txt deliberately,"
    echo "together with lib/libm2mvpn.sym (new calls in a new node, e.g. M2MVPN_1.1; a released"
    echo "node never changes), the changelog in include/m2mvpn/m2mvpn.h, docs/api/ and the Python binding."
    exit 1
fi
echo "ABI: $(wc -l <<<"$exported") symbols, all versioned, as listed in $(basename "$list")"
