# SPDX-License-Identifier: Apache-2.0
"""Helpers of the CLI tests: paths of the built tools, a profile, a running
`m2mvpn run` service in a private temp folder.

Environment (set by meson, see tools/tests/meson.build): M2MVPN_CLI (the
m2mvpn binary), M2MVPN_DAEMON (m2mvpnd), M2MVPN_LIB (the library, for the
Python binding on PYTHONPATH), M2MVPN_FEATURES (what the build can do).

What the build can do comes from the build configuration, never from asking
the code under test: meson passes its feature words (m2mvpn_features in
lib/meson.build) as M2MVPN_FEATURES. A test of a feature the build lacks is
marked xfail(strict=True) by needs_feature(): it runs, must fail, and turns
into a failure (XPASS) once the feature works and its word is added.
"""
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

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


# The service runs in a private network namespace of its own (only "lo"), so
# a connect attempt can neither reach nor change the host's network.
NETNS_WRAP = (["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
              if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip") else None)


def _build_features():
    words = os.environ.get("M2MVPN_FEATURES")
    if words is None:
        raise RuntimeError("M2MVPN_FEATURES is not set: run the tests through `meson test` "
                           "(or set it as tools/tests/meson.build does)")
    return frozenset(words.split())


BUILD_FEATURES = _build_features()


def needs_feature(word, what):
    """Strict expected failure while the build lacks `word` (see above)."""
    return pytest.mark.xfail(word not in BUILD_FEATURES, strict=True,
                             reason="%s: not in this build (%r is not in M2MVPN_FEATURES)" % (what, word))




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

    def __init__(self, workdir, profile, binary=None, verbose=True, extra_args=(), wrap=None):
        self.isolated = NETNS_WRAP is not None
        self.control = os.path.join(workdir, "ctl", "control.sock")
        self.state_dir = os.path.join(workdir, "state")
        self.log_path = os.path.join(workdir, "service.log")
        argv = [binary] if binary else [CLI, "run"]
        argv += ["--profile", profile, "--control", self.control, "--state-dir", self.state_dir]
        if verbose:
            argv.append("-v")
        argv += list(extra_args)
        if wrap is not None:
            argv = list(wrap) + argv  # the caller's own isolation; it must exec too
        elif self.isolated:
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
