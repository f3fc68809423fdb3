#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Cross builds for ARM Linux: install what they need (scripts/deps-cross.sh),
# build the library, the tools, the examples, the benchmarks and the tests
# with cross/<triplet>.ini (-Dwerror=true), and run the unit, contract and
# Python tests under qemu-user. scripts/test.sh runs the same and counts it.
#   scripts/test-cross.sh [aarch64] [armhf]     (default: both)
# Build folders: ${BUILD_DIR:-build}-aarch64, ${BUILD_DIR:-build}-armhf.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64 armhf)

bash scripts/deps-cross.sh "${targets[@]}" || { echo "cross dependency installation failed"; exit 1; }

declare -A crossfile=([aarch64]=cross/aarch64-linux-gnu.ini [armhf]=cross/arm-linux-gnueabihf.ini)
status=0
for t in "${targets[@]}"; do
  dir=$build-$t
  opts=(--cross-file "${crossfile[$t]}" -Dwerror=true -Dpkcs11=disabled -Dtpm=disabled)
  if [ -d "$dir" ]; then
    meson setup --reconfigure "$dir" "${opts[@]}" >/dev/null
  else
    meson setup "$dir" "${opts[@]}" >/dev/null
  fi || { echo "$t: meson setup FAILED"; status=1; continue; }
  if ! out=$(ninja -C "$dir" 2>&1); then
    echo "$out" | tail -n 60
    echo "$t: cross build FAILED"
    status=1
    continue
  fi
  echo "$t: cross build ok"
  meson test -C "$dir" --print-errorlogs --num-processes 2 || status=1
done
exit $status
