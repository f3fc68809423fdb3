# SPDX-License-Identifier: Apache-2.0
"""Operating the service: SIGHUP reloads the profile file, `--log syslog`,
`--control-group` for a non-root operator group, uptime in `status`.
(The tunnel side of a reload, SPIs kept on a rejected file, is in
tests/interop/test_service_reload.py.)"""
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile

import pytest

from cli_helpers import CLI, NETNS_WRAP, PROFILE_NAMES, PROFILES, Service, cli, one_error_line, wait_for


# Set by meson for a cross build run under qemu-user: other users run the binaries from the build tree.
on_host_only = pytest.mark.skipif(bool(os.environ.get("M2MVPN_TEST_EMULATED")),
                                  reason="other users run the binaries from the build tree (not under qemu-user)")


def _status(svc):
    p = cli("status", "--json", "--control", svc.control)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _write(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))
    os.rename(tmp, path)


# ---------------------------------------------------------------- SIGHUP

def test_sighup_rejects_an_invalid_file_and_keeps_the_old_profiles(service, profile_file):
    before = _status(service)
    assert before["service"]["reload"] == {"taken": 0, "rejected": 0, "last": None}
    bad = json.loads(json.dumps(PROFILES))
    bad["profiles"][0]["tunnel"]["mtu_typo"] = 1400
    _write(profile_file, bad)
    service.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: _status(service)["service"]["reload"]["rejected"] == 1), service.log()
    st = _status(service)
    last = st["service"]["reload"]["last"]
    assert last["ok"] is False and "mtu_typo" in last["error"], last
    assert st["service"]["reload"]["taken"] == 0
    # The old profiles are all still there and usable.
    assert st["profile"] == PROFILE_NAMES[0] and st["state"] == "idle"
    assert cli("switch", PROFILE_NAMES[1], "--control", service.control).returncode == 0
    assert wait_for(lambda: _status(service)["profile"] == PROFILE_NAMES[1])
    # In the log, as an error, and in the plain status.
    log = service.log()
    assert "error [service] reload of %s rejected" % profile_file in log and "mtu_typo" in log, log
    plain = cli("status", "--control", service.control).stdout
    assert "reload:      REJECTED at " in plain and "mtu_typo" in plain, plain
    assert service.proc.poll() is None


def test_sighup_takes_a_valid_changed_file(service, profile_file):
    changed = json.loads(json.dumps(PROFILES))
    changed["profiles"].append(dict(changed["profiles"][0], name="atm-new"))
    # Before the reload the new name is unknown.
    p = cli("switch", "atm-new", "--control", service.control)
    assert p.returncode == 1 and "atm-new" in one_error_line(p)
    _write(profile_file, changed)
    service.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: _status(service)["service"]["reload"]["taken"] == 1), service.log()
    last = _status(service)["service"]["reload"]["last"]
    assert last["ok"] is True and last["error"] is None
    p = cli("switch", "atm-new", "--control", service.control)
    assert p.returncode == 0, p.stderr
    assert wait_for(lambda: _status(service)["profile"] == "atm-new")
    assert "reload:      taken at " in cli("status", "--control", service.control).stdout


def test_a_missing_file_on_reload_is_rejected_too(service, profile_file):
    os.unlink(profile_file)
    service.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: _status(service)["service"]["reload"]["rejected"] == 1), service.log()
    assert "No such file or directory" in _status(service)["service"]["reload"]["last"]["error"]
    assert _status(service)["profile"] == PROFILE_NAMES[0]


# ----------------------------------------------------------- status/uptime

def test_status_shows_the_service_and_its_uptime(service, profile_file):
    st = _status(service)["service"]
    assert st["pid"] == service.proc.pid
    assert st["profile_file"] == profile_file
    assert st["log"] == "stderr" and st["control_group"] is None
    assert isinstance(st["uptime_s"], int) and st["uptime_s"] >= 0
    assert wait_for(lambda: _status(service)["service"]["uptime_s"] >= 1, timeout=5)
    line = [ln for ln in cli("status", "--control", service.control).stdout.splitlines()
            if ln.startswith("service:")]
    assert len(line) == 1 and line[0].startswith("service:     pid %d, up 00:00:0" % service.proc.pid), line


# ---------------------------------------------------------------- options

@pytest.mark.parametrize("args,message", [
    (["--log", "journal"], "--log takes 'stderr' or 'syslog', not 'journal'"),
    (["--control-group", ""], "--control-group needs a group name"),
])
def test_bad_service_options(profile_file, args, message):
    p = cli("run", "--profile", profile_file, *args)
    assert p.returncode == 2
    assert message in one_error_line(p)


def test_unknown_control_group_stops_start_up(workdir, profile_file):
    svc = Service(workdir, profile_file, extra_args=["--control-group", "no-such-group-m2m"])
    try:
        assert svc.proc.wait(10) == 1
        assert "no group named 'no-such-group-m2m'" in svc.log()
    finally:
        svc.kill()


# ------------------------------------------------------------------ syslog

# A private mount namespace whose /dev holds only what the service needs
# and, as /dev/log, the datagram socket the test reads (glibc's syslog()
# always writes to /dev/log).
_SYSLOG_WRAP = r'''
set -e
ip link set lo up
d=$1; shift
for f in null zero urandom random; do : > "$d/$f"; mount --bind "/dev/$f" "$d/$f"; done
mkdir -p "$d/net"; : > "$d/net/tun"; mount --bind /dev/net/tun "$d/net/tun"
mount --rbind "$d" /dev
exec "$@"
'''


def _read_syslog(sock, want, timeout=10.0):
    """Datagrams until one contains `want`; returns all read so far."""
    got = []
    sock.settimeout(timeout)
    while not any(want in m for m in got):
        got.append(sock.recv(4096).decode("utf-8", "replace"))
    return got


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare for a private /dev/log")
def test_log_syslog_sends_lines_with_their_priority(workdir, profile_file):
    dev = os.path.join(workdir, "dev")
    os.mkdir(dev)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.path.join(dev, "log"))
    os.chmod(os.path.join(dev, "log"), 0o666)
    wrap = ["unshare", "-m", "-n", "--propagation", "private", "--", "sh", "-c", _SYSLOG_WRAP, "sh", dev]
    svc = Service(workdir, profile_file, extra_args=["--log", "syslog"], wrap=wrap)
    try:
        svc.wait_ready()
        # daemon facility (3): <27> error, <28> warning, <30> info, <31> debug
        msgs = _read_syslog(sock, "serving")
        serving = [m for m in msgs if "serving" in m][0]
        assert serving.startswith("<30>") and "m2mvpn[%d]: [service] m2mvpn " % svc.proc.pid in serving, serving
        _write(profile_file, '{"version": 1, "name": "x", "nonsense": 1}')
        svc.proc.send_signal(signal.SIGHUP)
        msgs = _read_syslog(sock, "rejected")
        rejected = [m for m in msgs if "rejected" in m][0]
        assert rejected.startswith("<27>") and "nonsense" in rejected, rejected
        assert cli("status", "--control", svc.control).returncode == 0
        msgs = _read_syslog(sock, "control: 'status'")
        assert [m for m in msgs if "control: 'status'" in m][0].startswith("<31>")  # -v: debug lines too
        assert _status(svc)["service"]["log"] == "syslog"
    finally:
        svc.stop()
        sock.close()
    assert "serving" not in svc.log() and "rejected" not in svc.log()  # nothing on stderr


# ----------------------------------------------------------- control group

@pytest.fixture
def ops_group():
    """A fresh group for the test (removed after), and an unused uid."""
    if os.geteuid() != 0 or not shutil.which("groupadd") or not shutil.which("setpriv"):
        pytest.skip("needs root, groupadd and setpriv to act as a non-root operator")
    name = "m2mops%d" % os.getpid()
    subprocess.run(["groupadd", name], check=True)
    try:
        import grp
        yield name, grp.getgrnam(name).gr_gid
    finally:
        subprocess.run(["groupdel", name], check=False)


NOBODY = 65534


def _as(uid, gid, groups, *args):
    """Run `m2mvpn ARGS` as uid/gid with exactly these supplementary groups."""
    grp_opt = ["--groups=" + ",".join(str(g) for g in groups)] if groups else ["--clear-groups"]
    return subprocess.run(["setpriv", "--reuid=%d" % uid, "--regid=%d" % gid, *grp_opt, "--", CLI, *args],
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def group_service(ops_group):
    name, gid = ops_group
    work = tempfile.mkdtemp(prefix="m2mgrp-")
    os.chmod(work, 0o711)  # others may pass through to the socket folder, no more
    profile = os.path.join(work, "profiles.json")
    _write(profile, PROFILES)
    os.chmod(profile, 0o600)
    svc = Service(work, profile, extra_args=["--control-group", name])
    try:
        yield svc.wait_ready(), name, gid
    finally:
        svc.kill()
        shutil.rmtree(work, ignore_errors=True)


def test_control_group_socket_and_folder_modes(group_service):
    svc, name, gid = group_service
    st = os.lstat(svc.control)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == gid
    folder = os.stat(os.path.dirname(svc.control))
    assert stat.S_IMODE(folder.st_mode) == 0o710 and folder.st_gid == gid  # search, no list, no write
    assert stat.S_IMODE(os.stat(svc.state_dir).st_mode) == 0o700
    assert _status(svc)["service"]["control_group"] == name


@on_host_only
@pytest.mark.parametrize("how", ["supplementary", "primary"])
def test_operator_group_may_run_status_and_connect(group_service, how):
    svc, _, gid = group_service
    ident = (NOBODY, NOBODY, [gid]) if how == "supplementary" else (NOBODY, gid, [])
    p = _as(*ident, "status", "--json", "--control", svc.control)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["profile"] == PROFILE_NAMES[0]
    p = _as(*ident, "connect", "--control", svc.control)
    assert p.returncode == 0, p.stderr
    # The attempt started (its gateway, 127.0.0.1:1, never answers).
    assert wait_for(lambda: "STATE_CHANGED idle -> connecting" in svc.log()), svc.log()
    assert "control: 'connect' from uid %d" % NOBODY in svc.log()
    p = _as(*ident, "disconnect", "--control", svc.control)
    assert p.returncode == 0, p.stderr


@on_host_only
def test_operator_may_not_stop_or_unload(group_service):
    svc, _, gid = group_service
    for args in (["stop"], ["unload", PROFILE_NAMES[0]], ["disconnect", "--remove"]):
        p = _as(NOBODY, NOBODY, [gid], *args, "--control", svc.control, *(["--state-dir", svc.state_dir]
                                                                           if args == ["stop"] else []))
        assert p.returncode == 1, (args, p.stdout, p.stderr)
        assert "is reserved to root and the service's own user" in one_error_line(p), p.stderr
    assert svc.proc.poll() is None
    assert _status(svc)["profile"] == PROFILE_NAMES[0]
    assert "control: refused 'stop' from operator uid %d" % NOBODY in svc.log()


@on_host_only
def test_user_outside_the_group_is_refused(group_service):
    svc, _, _ = group_service
    p = _as(NOBODY, NOBODY, [], "status", "--control", svc.control)
    assert p.returncode == 3
    assert "Permission denied" in one_error_line(p)


@on_host_only
def test_service_peer_check_refuses_a_non_member_past_the_file_mode(group_service):
    """The socket's mode is the first gate; the service checks the peer's
    groups itself too. A non-member that got hold of a connected socket
    (here: the folder and socket opened to everyone) is still refused."""
    svc, _, _ = group_service
    os.chmod(os.path.dirname(svc.control), 0o711)
    os.chmod(svc.control, 0o666)
    p = _as(NOBODY, NOBODY, [], "status", "--control", svc.control)
    assert p.returncode == 1
    assert "only root, the service's own user or its control group may use it" in one_error_line(p)


def test_start_passes_the_service_options_on(ops_group, workdir, profile_file):
    """`m2mvpn start` hands --control-group and --log to the detached service."""
    name, gid = ops_group
    control = os.path.join(workdir, "ctl", "control.sock")
    state = os.path.join(workdir, "state")
    p = cli("start", "--profile", profile_file, "--control", control, "--state-dir", state,
            "--control-group", name, "--log", "stderr")
    assert p.returncode == 0, p.stderr
    try:
        p = cli("status", "--json", "--control", control)
        assert p.returncode == 0, p.stderr
        svc = json.loads(p.stdout)["service"]
        assert svc["control_group"] == name and svc["log"] == "stderr"
        assert os.lstat(control).st_gid == gid and stat.S_IMODE(os.lstat(control).st_mode) == 0o660
    finally:
        assert cli("stop", "--control", control, "--state-dir", state).returncode == 0


# ---------------------------------------------------------------- malloc

def _environ(pid):
    with open("/proc/%d/environ" % pid, "rb") as f:
        return [v.decode(errors="replace") for v in f.read().split(b"\0") if v]


@pytest.mark.skipif(bool(os.environ.get("M2MVPN_TEST_EMULATED")),
                    reason="under qemu-user the service's re-execution of itself is qemu's to make (binfmt_misc), "
                    "not the program's (on a device it is a plain exec)")
def test_the_service_runs_with_glibc_tcache_off(service):
    # What the process was (re-)executed with: tcache off (see docs/cli.md, ENVIRONMENT).
    env = _environ(service.proc.pid)
    assert "GLIBC_TUNABLES=glibc.malloc.tcache_count=0" in env
    assert _status(service)["state"] == "idle"


def test_a_users_glibc_tunables_are_left_alone(workdir, profile_file):
    mine = "GLIBC_TUNABLES=glibc.malloc.perturb=0"
    wrap = (NETNS_WRAP or []) + ["env", mine]
    svc = Service(workdir, profile_file, wrap=wrap)
    try:
        svc.wait_ready()
        env = _environ(svc.proc.pid)
        assert mine in env
        assert not any(v.startswith("M2MVPN_MALLOC_TUNED") for v in env)
        assert _status(svc)["state"] == "idle"
    finally:
        svc.kill()
