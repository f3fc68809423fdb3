# SPDX-License-Identifier: Apache-2.0
"""The interop run's sanitizer check works (sanitizer.py, conftest.py).

A canary built with the same sanitizers as our binaries (sanitizer_canary.c)
leaks or overflows on purpose. Run through the harness, its report must fail
the run and be printed: in a nested pytest run (sanitizer_canary_run.py, which
ignores the canary's exit code, so only the report check can fail it), and
where the tests stop our engine (M2mvpnClient.stop()) and ike_probe
(test_ike.finish()), which must also fail on the exit code alone (that is
what catches UBSan in GCC builds: it writes to stderr, see sanitizer.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import m2mvpn_client
import netlab
import sanitizer
import test_ike

HERE = Path(__file__).resolve().parent
CANARY = os.environ.get("M2MVPN_SANITIZER_CANARY", "")

pytestmark = pytest.mark.skipif(not CANARY or not Path(CANARY).is_file(),
                                reason="M2MVPN_SANITIZER_CANARY (the built sanitizer_canary) is not set")

# As meson's interop-asan test sets them (tests/interop/meson.build).
OPTIONS = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:abort_on_error=1"}
LEAK = "ERROR: LeakSanitizer: detected memory leaks"
OVERFLOW = "ERROR: AddressSanitizer: heap-buffer-overflow"
UBSAN = "runtime error: signed integer overflow"


def nested_run(logs: Path, action: str) -> subprocess.CompletedProcess:
    """pytest on sanitizer_canary_run.py as meson runs the suite."""
    env = dict(os.environ, **OPTIONS, M2MVPN_SANITIZER_LOGS=str(logs), M2MVPN_CANARY_ACTION=action)
    return subprocess.run([sys.executable, str(HERE / "run_pytest.py"), "-q",
                           str(HERE / "sanitizer_canary_run.py")],
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("action,report", [("leak", LEAK), ("overflow", OVERFLOW)])
def test_a_sanitizer_report_fails_the_run(tmp_path, action, report):
    logs = tmp_path / "logs"
    run = nested_run(logs, action)
    out = run.stdout + run.stderr
    assert "1 passed" in run.stdout, out       # the test itself passed...
    assert run.returncode == 1, out            # ...the report failed the run
    assert "==== sanitizer report asan." in run.stdout, out
    assert report in run.stdout, out
    assert "sanitizer_canary.c" in run.stdout, out   # with the stack
    assert "FAIL: 1 sanitizer report(s) from our binaries" in run.stdout, out


def test_a_clean_run_passes_and_old_reports_do_not_count(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "asan.1").write_text(f"==1=={LEAK}\n")   # from an earlier run
    run = nested_run(logs, "clean")
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "1 passed" in run.stdout and "sanitizer report" not in run.stdout, out
    assert list(logs.iterdir()) == []


@pytest.fixture
def own_logs(tmp_path, monkeypatch):
    """A report folder of this test only (never the run's own one: the
    canary's reports must not fail the run this test is part of)."""
    logs = tmp_path / "logs"
    monkeypatch.setenv(sanitizer.LOGS_ENV, str(logs))
    for var, value in OPTIONS.items():
        monkeypatch.setenv(var, value)
    sanitizer.prepare(logs)
    return logs


@pytest.mark.parametrize("on_term,report", [("clean", None), ("leak", LEAK), ("overflow", OVERFLOW),
                                            ("ubsan", UBSAN)])
def test_engine_stop_checks_exit_and_reports(own_logs, workdir, monkeypatch, on_term, report):
    """The canary stands in for `m2mvpn run`; after SIGTERM it exits 0 or
    leaks or overflows."""
    monkeypatch.setenv("M2MVPN_CANARY_ON_TERM", on_term)
    with netlab.Namespace("client") as ns:
        client = m2mvpn_client.M2mvpnClient(ns, Path(CANARY), workdir, {"version": 1}).start()
        if report is None:
            client.stop()
            assert client.proc.returncode == 0
            return
        with pytest.raises(m2mvpn_client.ClientError) as e:
            client.stop()
    msg = str(e.value)
    assert msg.startswith(f"m2mvpn run (pid {client.proc.pid}): "), msg
    assert report in msg, msg
    if on_term != "leak":
        assert "killed by SIGABRT" in msg, msg   # abort_on_error


@pytest.mark.parametrize("action,printed,problem", [
    ("clean", "established", None),
    ("clean", "failed", "exit code 0, expected exit code 1"),   # no report: the code alone
    ("overflow", "established", OVERFLOW),
    ("ubsan", "established", UBSAN),
])
def test_ike_probe_finish_checks_exit_and_reports(own_logs, action, printed, problem):
    with netlab.Namespace("client") as ns:
        proc = ns.popen([CANARY, action], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        test_ike._printed[proc.pid] = {"result": printed}
        if problem is None:
            test_ike.finish(proc)
            return
        with pytest.raises(AssertionError) as e:
            test_ike.finish(proc)
    assert problem in str(e.value), str(e.value)
