#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# The demo command: install what is missing, build, run scripts/demo.py (root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
[ -d build ] || meson setup build >/dev/null
ninja -C build >/dev/null
exec /usr/bin/python3 scripts/demo.py
