#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# The test command: install dependencies, build, run every test (unit, contract,
# Python, interop against strongSwan in network namespaces) and the same unit
# tests again under ASan+UBSan. Interop tests need root. Ends with one line:
#   N passed, N failed[, N skipped]
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}

bash scripts/deps.sh || { echo "dependency installation failed"; exit 1; }
if [ -d "$build" ]; then
  meson setup --reconfigure "$build" >/dev/null || exit 1
else
  meson setup "$build" >/dev/null || exit 1
fi
ninja -C "$build" || exit 1

meson test -C "$build" --print-errorlogs --num-processes 2
meson test -C "$build" --setup=asan --print-errorlogs --num-processes 2

# Count from meson's machine-readable logs (one JSON object per test).
/usr/bin/python3 - "$build/meson-logs/testlog.json" "$build/meson-logs/testlog-asan.json" <<'PY'
import json, sys
passed = failed = skipped = 0
for path in sys.argv[1:]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        print(f"missing test log {path}")
        failed += 1
        continue
    for line in lines:
        if not line.strip():
            continue
        r = json.loads(line)["result"]
        if r in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif r == "SKIP":
            skipped += 1
        else:
            failed += 1
summary = f"{passed} passed, {failed} failed"
if skipped:
    summary += f", {skipped} skipped"
print(summary)
sys.exit(1 if failed or passed == 0 else 0)
PY
