# SPDX-License-Identifier: Apache-2.0
"""Sanitizer reports of our binaries in the interop run (ASan, LSan, UBSan).

meson's `interop-asan` test runs the suite with m2mvpn and ike_probe built
with ASan+UBSan and sets M2MVPN_SANITIZER_LOGS to a folder. At session start
``prepare()`` empties that folder and points ASAN_OPTIONS and UBSAN_OPTIONS
(``log_path``) into it in os.environ, which every process the tests start
inherits (``ip netns exec`` keeps the environment). A sanitizer then writes
each report, leaks found at exit included, to ``<folder>/asan.<pid>`` or
``ubsan.<pid>`` instead of the process's stderr; conftest.py's
pytest_sessionfinish prints them and fails the run (``collect()``).

A process the tests stop is also checked on its own (``exit_problem()``): a
report makes it exit with an error or abort, and the test that owned it fails
with the report of that pid.

UBSan built by GCC (libubsan next to libasan, as here) ignores log_path and
writes to the process's stderr. Its errors are fatal in our builds
(-fno-sanitize-recover=all, abort_on_error=1), so they are caught by those
exit checks, and the message is in the log tail they print. With a UBSan-only
or clang build the report lands in the folder like the others.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

LOGS_ENV = "M2MVPN_SANITIZER_LOGS"


def logs_dir() -> Path | None:
    """The report folder of this run, or None when not checking."""
    value = os.environ.get(LOGS_ENV)
    return Path(value) if value else None


def _with_options(current: str, **wanted: str) -> str:
    """A sanitizer option string with `wanted` set (replacing the same keys)."""
    kept = [o for o in current.split(":") if o and o.split("=", 1)[0] not in wanted]
    return ":".join(kept + [f"{k}={v}" for k, v in wanted.items()])


def prepare(folder: Path) -> None:
    """Empty `folder` (reports of an earlier run must not count, nor hide
    that this run wrote none) and point the sanitizers of every process
    started from now on into it. Leak checking stays on."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ[LOGS_ENV] = str(folder)
    os.environ["ASAN_OPTIONS"] = _with_options(os.environ.get("ASAN_OPTIONS", ""),
                                               log_path=str(folder / "asan"), detect_leaks="1")
    os.environ["UBSAN_OPTIONS"] = _with_options(os.environ.get("UBSAN_OPTIONS", ""),
                                                log_path=str(folder / "ubsan"),
                                                print_stacktrace="1", halt_on_error="1")


def collect(folder: Path) -> list[tuple[str, str]]:
    """(file name, text) of every report in folder, sorted by name."""
    if not folder.is_dir():
        return []
    return [(p.name, p.read_text(errors="replace")) for p in sorted(folder.iterdir()) if p.is_file()]


def report_of(pid: int) -> str:
    """The sanitizer reports process `pid` wrote in this run, or ""."""
    folder = logs_dir()
    if folder is None:
        return ""
    return "".join(f"\n==== sanitizer report {name}\n{text[-6000:]}"
                   for name, text in collect(folder) if name.rsplit(".", 1)[-1] == str(pid))


def describe_code(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def exit_problem(what: str, pid: int, code: int | None, expected: int) -> str | None:
    """None when `what` (pid) ended with `expected`; otherwise a message with
    how it ended and its sanitizer report, if it wrote one."""
    report = report_of(pid)
    if code == expected and not report:
        return None
    how = "did not end" if code is None else describe_code(code)
    return f"{what} (pid {pid}): {how}, expected exit code {expected}{report}"
