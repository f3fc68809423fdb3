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

# libFuzzer smoke runs of every parser's fuzz target (clang build).
fuzz=${build}-fuzz
if [ -d "$fuzz" ]; then
  meson setup --reconfigure "$fuzz" >/dev/null || exit 1
else
  CC=clang meson setup "$fuzz" -Dfuzz=enabled -Dtests=false >/dev/null || exit 1
fi
ninja -C "$fuzz" >/dev/null || exit 1
meson test -C "$fuzz" --suite fuzz --print-errorlogs --num-processes 2

# Count from meson's machine-readable logs: the individual checks of each
# Check suite and pytest run (from their own summary lines), and any other
# meson test as one. A suite that failed without printing its counts counts
# as one failure.
/usr/bin/python3 - "$build/meson-logs/testlog.json" "$build/meson-logs/testlog-asan.json" \
    "$fuzz/meson-logs/testlog.json" <<'PY'
import json, re, sys
CHECK = re.compile(r"^\d+%: Checks: (\d+), Failures: (\d+), Errors: (\d+)", re.M)
PYTEST = re.compile(r"^=*\s*((?:\d+ \w+,? ?)+) in [\d.]+s", re.M)
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
        t = json.loads(line)
        result, out = t["result"], t.get("stdout") or ""
        checks = CHECK.findall(out)
        pyt = PYTEST.findall(out)
        if checks:
            n, f, e = (sum(int(c[i]) for c in checks) for i in range(3))
            passed += n - f - e
            failed += f + e
        elif pyt:
            counts = dict((k, int(v)) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|xfailed|xpassed)", pyt[-1]))
            passed += counts.get("passed", 0)
            failed += counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0) + counts.get("xpassed", 0)
            skipped += counts.get("skipped", 0) + counts.get("xfailed", 0)
        else:
            if result == "OK":
                passed += 1
            elif result == "SKIP":
                skipped += 1
            else:
                failed += 1
            continue
        if result not in ("OK", "SKIP") and not failed:
            failed += 1  # the runner failed although its counts look clean
summary = f"{passed} passed, {failed} failed"
if skipped:
    summary += f", {skipped} skipped"
print(summary)
sys.exit(1 if failed or passed == 0 else 0)
PY
