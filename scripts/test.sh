#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# The test command: install dependencies, build with -Dwerror=true, run every
# test (unit, contract, Python, interop against strongSwan in network
# namespaces), the unit, CLI and interop tests again under ASan+UBSan, the
# multi-threaded API tests and the Python binding tests again under TSan, a
# release build (-Dwerror=true, compile only), a short libFuzzer run of
# every parser, and cross builds for 64- and 32-bit ARM with their unit,
# contract and Python tests under qemu-user (as scripts/test-cross.sh).
# Interop tests need root. Ends with one line:
#   N passed, N failed[, N skipped]
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
release=${build}-release
fuzz=${build}-fuzz
cross_targets=(aarch64 armhf)
declare -A cross_file=([aarch64]=cross/aarch64-linux-gnu.ini [armhf]=cross/arm-linux-gnueabihf.ini)

bash scripts/deps.sh || { echo "dependency installation failed"; exit 1; }
# The ARM cross builds' packages, before anything is built: aligning a
# multiarch library's versions may update the x86-64 one. A failure here
# fails only the cross builds (below).
cross_deps=ok
bash scripts/deps-cross.sh "${cross_targets[@]}" || cross_deps=failed

# setup DIR OPTION...: configure DIR (new or existing) with these options.
setup() {
  local dir=$1
  shift
  if [ -d "$dir" ]; then
    meson setup --reconfigure "$dir" "$@" >/dev/null
  else
    meson setup "$dir" "$@" >/dev/null
  fi
}

# A build's result as one line for the counting below: NAME=ok|failed.
builds=()
# build NAME DIR: ninja in DIR; on failure show the end of its output.
build() {
  local out
  if out=$(ninja -C "$2" 2>&1); then
    builds+=("$1=ok")
  else
    echo "$out" | tail -n 60
    echo "$1 FAILED"
    builds+=("$1=failed")
  fi
}

# Warnings are errors here (not in the default build users run).
setup "$build" -Dwerror=true -Dpkgconfig.relocatable=true || exit 1
ninja -C "$build" || exit 1

# Only logs written by this run are counted: an emptied or skipped suite
# must not be counted from an earlier run's log.
rm -f "$build"/meson-logs/testlog*.json "$fuzz"/meson-logs/testlog*.json
for t in "${cross_targets[@]}"; do rm -f "$build-$t"/meson-logs/testlog*.json; done
start=$(date +%s)

meson test -C "$build" --print-errorlogs --num-processes 2
meson test -C "$build" --setup=asan --print-errorlogs --num-processes 2
meson test -C "$build" --setup=tsan --print-errorlogs --num-processes 2

# Release build (-O3 finds other warnings, e.g. -Wmaybe-uninitialized):
# library, tools, examples and benchmarks, compiled only.
if setup "$release" --buildtype=release -Dwerror=true -Dtests=false; then
  build "release build" "$release"
else
  echo "release build: meson setup FAILED"
  builds+=("release build=failed")
fi

# libFuzzer smoke runs of every parser's fuzz target (clang build).
logs=("distinct=$build/meson-logs/testlog.json"
      "asan=$build/meson-logs/testlog-asan.json"
      "tsan=$build/meson-logs/testlog-tsan.json")
if CC=clang setup "$fuzz" -Dfuzz=enabled -Dtests=false -Dwerror=true; then
  build "fuzz build" "$fuzz"
else
  echo "fuzz build: meson setup FAILED"
  builds+=("fuzz build=failed")
fi
if [ "${builds[-1]}" = "fuzz build=ok" ]; then
  meson test -C "$fuzz" --suite fuzz --print-errorlogs --num-processes 2
  logs+=("distinct=$fuzz/meson-logs/testlog.json")
fi

# Cross builds (-Dwerror=true: on armhf that checks the printf formats of
# 64-bit counters) and their unit, contract and Python tests under qemu-user:
# the same checks again on 64- and 32-bit ARM, counted as reruns.
if [ $cross_deps = ok ]; then
  for t in "${cross_targets[@]}"; do
    if setup "$build-$t" --cross-file "${cross_file[$t]}" -Dwerror=true -Dpkcs11=disabled -Dtpm=disabled; then
      build "$t cross build" "$build-$t"
    else
      echo "$t cross build: meson setup FAILED"
      builds+=("$t cross build=failed")
    fi
    if [ "${builds[-1]}" = "$t cross build=ok" ]; then
      meson test -C "$build-$t" --print-errorlogs --num-processes 2
      logs+=("cross=$build-$t/meson-logs/testlog.json")
    fi
  done
else
  echo "cross builds: scripts/deps-cross.sh FAILED"
  builds+=("cross dependencies=failed")
fi

# Count from meson's machine-readable logs: the individual checks of each
# Check suite and pytest run (from their own summary lines), any other meson
# test as one, each build above as one. A runner that failed, or ran no
# check at all, counts as a failure even if its counts look clean.
/usr/bin/python3 - "$start" "${logs[@]}" -- "${builds[@]}" <<'PY'
import json, os, re, sys
CHECK = re.compile(r"^\d+%: Checks: (\d+), Failures: (\d+), Errors: (\d+)", re.M)
PYTEST = re.compile(r"^=*\s*((?:\d+ \w+,? ?)+) in [\d.]+s", re.M)
# Root-only checks a suite left out without root (tests/unit/test_esp.c).
NOT_RUN = re.compile(r"^\S+: SKIPPED (\d+) checks?\b", re.M)

start, args = float(sys.argv[1]), sys.argv[2:]
sep = args.index("--")
logs, builds = args[:sep], args[sep + 1:]
passed = failed = skipped = 0
ran = {"distinct": 0, "asan": 0, "tsan": 0, "cross": 0}  # checks that ran, by kind
failures = []

def suite_counts(t):
    """(passed, failed, skipped) of one meson test from its output."""
    result, out = t["result"], (t.get("stdout") or "") + (t.get("stderr") or "")
    p = f = s = 0
    checks, pyt = CHECK.findall(out), PYTEST.findall(out)
    if checks:
        p = sum(int(c[0]) - int(c[1]) - int(c[2]) for c in checks)
        f = sum(int(c[1]) + int(c[2]) for c in checks)
        s = sum(int(n) for n in NOT_RUN.findall(out))
        if p + f == 0:
            f = 1  # a suite that ran no check tests nothing
    elif pyt:
        c = dict((k, int(v)) for v, k in re.findall(
            r"(\d+) (passed|failed|skipped|error|errors|xfailed|xpassed)", pyt[-1]))
        p = c.get("passed", 0)
        f = c.get("failed", 0) + c.get("error", 0) + c.get("errors", 0) + c.get("xpassed", 0)
        s = c.get("skipped", 0) + c.get("xfailed", 0)
    elif result == "OK":
        p = 1
    elif result == "SKIP":
        s = 1
    else:
        f = 1
    if result not in ("OK", "SKIP") and f == 0:
        f = 1  # the runner failed although its counts look clean
    return p, f, s

for arg in logs:
    kind, path = arg.split("=", 1)
    try:
        if os.stat(path).st_mtime < start:
            raise OSError("not written by this run")
        lines = open(path).read().splitlines()
    except OSError as e:
        print(f"test log {path}: {e}")
        failed += 1
        failures.append(path)
        continue
    for line in lines:
        if not line.strip():
            continue
        t = json.loads(line)
        p, f, s = suite_counts(t)
        passed, failed, skipped = passed + p, failed + f, skipped + s
        ran[kind] += p + f
        if f:
            # a cross build's test, with its build folder: "esp (build-armhf)"
            failures.append(t["name"] if kind != "cross" else
                            f"{t['name']} ({os.path.basename(os.path.dirname(os.path.dirname(path)))})")

for b in builds:
    name, result = b.rsplit("=", 1)
    ran["distinct"] += 1
    if result == "ok":
        passed += 1
    else:
        failed += 1
        failures.append(name)

if failures:
    print("failed: " + ", ".join(failures))
reruns = ran["asan"] + ran["tsan"] + ran["cross"]
print(f"checks run: {ran['distinct']} distinct, and {reruns} reruns of them "
      f"(ASan+UBSan {ran['asan']}, TSan {ran['tsan']}, ARM under qemu-user {ran['cross']})")
summary = f"{passed} passed, {failed} failed"
if skipped:
    summary += f", {skipped} skipped"
print(summary)
sys.exit(1 if failed or passed == 0 else 0)
PY
