# SPDX-License-Identifier: Apache-2.0
"""Helpers of the CLI tests: paths of the built tools, a profile, a running
`m2mvpn run` service in a private temp folder.

Environment (set by meson, see tools/tests/meson.build): M2MVPN_CLI (the
m2mvpn binary), M2MVPN_DAEMON (m2mvpnd), M2MVPN_LIB (the library, for the
feature probes through the Python binding on PYTHONPATH).

Tests that need a working profile parser are xfail(strict=True) while the
library answers profile loading with NOTSUPP (the parser is written in
parallel); once it lands they run for real and must pass.
"""
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

import m2mvpn

CLI = os.environ.get("M2MVPN_CLI", "m2mvpn")
DAEMON = os.environ.get("M2MVPN_DAEMON", "m2mvpnd")

# Two valid version-1 profiles (DESIGN.md section 4). Mode "manual": the
# service never connects by itself; the gateway is 127.0.0.1 on an unused
# port, the kill switch is off and only the tunnel range is routed, so even a
# connect attempt stays on this machine and leaves host routes alone.
_BASE = {
    "version": 1,
    "mode": "manual",
    "gateways": [{"host": "127.0.0.1", "port": 1}],
    "local_id": "dev1.m2m.test",
    "remote_id": "gw.m2m.test",
    "auth": {"method": "psk", "psk": "cli-test-psk-0123456789abcdef0123"},
    "tunnel": {"kill_switch": False, "remote_ts": ["198.18.0.0/15"]},
}
PROFILE_NAMES = ("atm-eu", "atm-backup")
PROFILES = {"version": 1, "profiles": [dict(_BASE, name=n) for n in PROFILE_NAMES]}


def _notsupp(fn):
    try:
        fn()
    except m2mvpn.M2mvpnError as e:
        return e.code == m2mvpn.ErrorCode.NOTSUPP
    return False


def _probe(call):
    with m2mvpn.Client() as c:
        return not _notsupp(lambda: call(c))


PARSER_BUILT = _probe(lambda c: c.load_profile_json(PROFILES))


def _probe_connect(c):
    # Queues a connect on a handle whose engine never runs: nothing is sent.
    c.load_profile_json(PROFILES)
    c.connect()


ENGINE_BUILT = PARSER_BUILT and _probe(_probe_connect)
# The service runs in a private network namespace of its own (only "lo"), so
# a connect attempt can neither reach nor change the host's network.
NETNS_WRAP = (["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
              if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip") else None)
CREDENTIALS_BUILT = _probe(lambda c: c.set_credentials("probe", "probe-password"))
PIN_BUILT = _probe(lambda c: c.enter_pin(b"0000"))

needs_parser = pytest.mark.xfail(
    not PARSER_BUILT, strict=True,
    reason="profile parser not in this build yet (m2mvpn_profile_load_* returns NOTSUPP)")
needs_engine = pytest.mark.xfail(
    not ENGINE_BUILT, strict=True,
    reason="IKE engine not in this build yet (m2mvpn_connect returns NOTSUPP)")
needs_credentials = pytest.mark.xfail(
    not (PARSER_BUILT and CREDENTIALS_BUILT), strict=True,
    reason="profile parser or EAP credentials not in this build yet (NOTSUPP)")
needs_pin = pytest.mark.xfail(
    not (PARSER_BUILT and PIN_BUILT), strict=True,
    reason="profile parser or PIN-protected credentials not in this build yet (NOTSUPP)")


def cli(*args, stdin=None, timeout=30):
    """Run the m2mvpn binary; returns CompletedProcess with text output."""
    return subprocess.run([CLI, *args], input=stdin, capture_output=True, text=True, timeout=timeout)


def one_error_line(proc):
    """The single stderr line of a failed command (asserts there is exactly one)."""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, "expected one error line, got: %r" % proc.stderr
    assert lines[0].startswith("m2mvpn: "), lines[0]
    return lines[0]


def process_gone(pid):
    """True if pid no longer runs (gone, or a zombie nobody reaped yet)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def wait_for(predicate, timeout=10.0, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def answers(sock_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(sock_path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def request(sock_path, data, timeout=5.0):
    """Send raw bytes to the control socket, return the raw answer (until EOF)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(sock_path)
        s.sendall(data)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
    finally:
        s.close()


class Service:
    """A `m2mvpn run` (or m2mvpnd) child with its log in a file."""

    def __init__(self, workdir, profile, binary=None, verbose=True):
        self.isolated = NETNS_WRAP is not None
        self.control = os.path.join(workdir, "ctl", "control.sock")
        self.state_dir = os.path.join(workdir, "state")
        self.log_path = os.path.join(workdir, "service.log")
        argv = [binary] if binary else [CLI, "run"]
        argv += ["--profile", profile, "--control", self.control, "--state-dir", self.state_dir]
        if verbose:
            argv.append("-v")
        if self.isolated:
            argv = NETNS_WRAP + argv  # exec all the way: proc.pid is the service
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout=10.0):
        ok = wait_for(lambda: self.proc.poll() is not None or answers(self.control), timeout)
        if self.proc.poll() is not None or not ok:
            raise AssertionError("service did not come up (exit %r): %s" % (self.proc.poll(), self.log()))
        return self

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
