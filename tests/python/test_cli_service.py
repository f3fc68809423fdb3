# SPDX-License-Identifier: Apache-2.0
"""`m2mvpn run` / `m2mvpnd` and the client commands against it."""
import json
import os
import signal
import socket
import stat
import subprocess

import pytest

import m2mvpn
from cli_helpers import (DAEMON, PROFILE_NAMES, PROFILES, Service, answers, cli,
                        one_error_line, request, wait_for)


def test_status_json_is_idle(service):
    p = cli("status", "--json", "--control", service.control)
    assert p.returncode == 0, p.stderr
    assert p.stdout.endswith("\n") and p.stdout.count("\n") == 1
    st = json.loads(p.stdout)
    assert st["state"] == "idle"
    assert st["profile"] == PROFILE_NAMES[0]
    assert st["version"] == m2mvpn.version()
    # The object of m2mvpn_status_json() for the same state (a handle with
    # the same profiles loaded, idle), with the service's own member appended.
    assert list(st)[-1] == "service"
    del st["service"]
    with m2mvpn.Client() as c:
        c.load_profile(PROFILES)
        lib = json.loads(c.status_json_text())
    assert st == lib and list(st) == list(lib)


def test_status_plain_summary(service):
    p = cli("status", "--control", service.control)
    assert p.returncode == 0, p.stderr
    fields = dict(line.split(":", 1) for line in p.stdout.splitlines())
    assert fields["state"].strip() == "idle"
    assert fields["profile"].strip() == PROFILE_NAMES[0]
    assert fields["version"].strip() == m2mvpn.version()
    assert fields["last error"].strip() == "-"
    assert fields["algorithms"].strip() == "-"  # nothing negotiated while idle


def test_socket_is_0600_in_a_0700_folder(service):
    st = os.lstat(service.control)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(service.control)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(service.state_dir).st_mode) == 0o700


@pytest.mark.parametrize("psk,warned", [("Short-psk-19-chars!", True), ("Long-enough-psk-20ch", False)])
def test_short_psk_is_warned_in_status_and_log(workdir, psk, warned):
    """A weak PSK still loads (existing gateways' keys keep working), with a
    warning that names its length class, never the key."""
    assert len(psk) == (19 if warned else 20)
    path = os.path.join(workdir, "weak.json")
    with open(path, "w") as f:
        json.dump(dict(PROFILES["profiles"][0], auth={"method": "psk", "psk": psk}), f)
    svc = Service(workdir, path)
    try:
        svc.wait_ready()
        js = cli("status", "--json", "--control", svc.control)
        plain = cli("status", "--control", svc.control)
        assert js.returncode == 0 and plain.returncode == 0, js.stderr + plain.stderr
        warnings = json.loads(js.stdout)["warnings"]
        log = svc.log()
    finally:
        svc.kill()
    if warned:
        assert len(warnings) == 1 and warnings[0].startswith("auth.psk has fewer than 20 characters: a man in "
                                                              "the middle can guess a weak pre-shared key offline")
        assert "warning:     auth.psk has fewer than 20 characters" in plain.stdout
        assert "warning [conn] profile %s: auth.psk has fewer than 20 characters" % PROFILE_NAMES[0] in log
    else:
        assert warnings == []
        assert "warning:" not in plain.stdout and "auth.psk" not in log
    for text in (js.stdout, plain.stdout, log):
        assert psk not in text


def test_pid_file_names_the_service(service):
    with open(os.path.join(service.state_dir, "m2mvpn.pid")) as f:
        assert int(f.read()) == service.proc.pid


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_with_exit_0(service, sig):
    assert service.stop(sig) == 0
    assert not os.path.exists(service.control)
    assert not os.path.exists(os.path.join(service.state_dir, "m2mvpn.pid"))
    log = service.log()
    assert "stopping (%s)" % signal.Signals(sig).name in log
    assert "stopped" in log


def test_stop_command_ends_a_foreground_service(service):
    p = cli("stop", "--control", service.control, "--state-dir", service.state_dir)
    assert p.returncode == 0, p.stderr
    assert service.proc.wait(15) == 0
    assert not answers(service.control)


def test_switch_between_profiles(service):
    p = cli("switch", PROFILE_NAMES[1], "--control", service.control)
    assert p.returncode == 0, p.stderr
    assert wait_for(lambda: json.loads(cli("status", "--json", "--control", service.control).stdout)["profile"]
                    == PROFILE_NAMES[1])


def test_refused_command_shows_the_library_error(service):
    p = cli("switch", "no-such", "--control", service.control)
    assert p.returncode == 1
    assert one_error_line(p) == "m2mvpn: switch refused: m2mvpn_profile_switch: no profile named 'no-such' is loaded"
    p = cli("connect", "no-such", "--control", service.control)
    assert p.returncode == 1
    assert "no profile named 'no-such'" in one_error_line(p)
    # The service carries on.
    assert cli("status", "--control", service.control).returncode == 0


def _status(service):
    p = cli("status", "--json", "--control", service.control)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_connect_disconnect_and_sigterm_while_connecting(service):
    if not service.isolated:
        pytest.skip("needs root and unshare: a connect attempt must stay in a private network namespace")
    p = cli("connect", "--control", service.control)
    assert p.returncode == 0, p.stderr
    # The gateway (127.0.0.1:1 in the service's own namespace) never answers:
    # the tunnel leaves idle, or fails with a recorded error.
    assert wait_for(lambda: (lambda st: st["state"] != "idle" or st["last_error"]["code"] != 0)(_status(service)))
    p = cli("disconnect", "--control", service.control)
    assert p.returncode == 0, p.stderr
    assert wait_for(lambda: _status(service)["state"] == "idle")
    assert cli("connect", "--control", service.control).returncode == 0
    assert service.stop() == 0  # SIGTERM while connecting: clean disconnect, exit 0
    assert "stopping (SIGTERM)" in service.log()


def test_disconnect_when_idle_is_fine(service):
    p = cli("disconnect", "--control", service.control)
    assert p.returncode == 0, p.stderr


SECRET_PASSWORD = "Pa55 w0rd%with spaces"
SECRET_PIN = "73915"


def _assert_secret_absent(service, secret, *procs):
    log = service.log()
    assert secret not in log
    for p in procs:
        assert secret not in p.stdout and secret not in p.stderr
    return log


def test_login_reads_the_password_from_stdin_and_never_logs_it(service):
    p = cli("login", "--user", "dev1", "--control", service.control, stdin=SECRET_PASSWORD + "\n")
    assert p.returncode == 0, p.stderr
    assert service.stop() == 0
    log = _assert_secret_absent(service, SECRET_PASSWORD, p)
    assert "control: 'login'" in log  # the request did reach the service (-v)
    for part in SECRET_PASSWORD.split():
        assert part not in log


def test_pin_reads_the_pin_from_stdin_and_never_logs_it(service):
    p = cli("pin", "--control", service.control, stdin=SECRET_PIN + "\n")
    assert p.returncode == 0, p.stderr
    assert service.stop() == 0
    log = _assert_secret_absent(service, SECRET_PIN, p)
    assert "control: 'pin'" in log


def test_login_is_accepted(service):
    p = cli("login", "--user", "dev1", "--control", service.control, stdin=SECRET_PASSWORD + "\n")
    assert p.returncode == 0, p.stderr


# ------------------------------------------------------------ the protocol

@pytest.mark.parametrize("line", [
    b"\n", b"bogus\n", b"status now\n", b"STATUS\n", b" status\n", b"switch\n", b"pin %zz\n",
    b"login onlyuser\n", b"\x00\xff\xfe\n", b"switch a%00b\n",
])
def test_bad_requests_get_an_error_answer(service, line):
    answer = request(service.control, line)
    assert answer.endswith(b"\n") and answer.count(b"\n") == 1
    obj = json.loads(answer)
    assert obj["ok"] is False and obj["error"] == "BAD_REQUEST" and obj["message"]
    assert json.loads(request(service.control, b"status\n"))["ok"] is True


def test_overlong_request_is_refused(service):
    answer = json.loads(request(service.control, b"pin " + b"1" * 10000 + b"\n"))
    assert answer["ok"] is False and "longer than" in answer["message"]
    assert json.loads(request(service.control, b"status\n"))["status"]["state"] == "idle"


def test_request_protocol_answers(service):
    ok = json.loads(request(service.control, b"status\n"))
    assert ok["ok"] is True and ok["status"]["state"] == "idle"
    refused = json.loads(request(service.control, b"switch nope\n"))
    assert refused == {"ok": False, "code": -9, "error": "NOPROFILE",
                       "message": "m2mvpn_profile_switch: no profile named 'nope' is loaded"}
    # Last line without "\n", then EOF from the client: still answered.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(service.control)
    s.sendall(b"status")
    s.shutdown(socket.SHUT_WR)
    assert json.loads(s.makefile("rb").readline())["ok"] is True
    s.close()


def test_silent_clients_do_not_block_the_service(service):
    # Occupy every client slot with connections that never send, until the
    # service turns one away with a "busy" answer.
    idle, busy = [], None
    try:
        for _ in range(64):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            idle.append(s)
            s.connect(service.control)
            s.settimeout(0.2)
            try:
                busy = s.recv(4096)
                break
            except socket.timeout:
                continue  # it holds a slot
        assert busy, "never turned away"
        answer = json.loads(busy)
        assert answer["ok"] is False and answer["error"] == "BUSY"
        p = cli("status", "--control", service.control)
        assert p.returncode == 1
        assert one_error_line(p) == "m2mvpn: status refused: too many clients at once, try again"
        # Idle clients time out; then it serves again.
        assert wait_for(lambda: cli("status", "--control", service.control).returncode == 0, timeout=15)
    finally:
        for s in idle:
            s.close()


def test_other_users_are_refused(service):
    # Open up the folders and socket so only SO_PEERCRED can stop "nobody".
    os.chmod(os.path.dirname(os.path.dirname(service.control)), 0o711)
    os.chmod(os.path.dirname(service.control), 0o755)
    os.chmod(service.control, 0o666)
    script = ("import os, socket\n"
              "os.setgid(65534); os.setuid(65534)\n"
              "s = socket.socket(socket.AF_UNIX); s.connect(%r)\n"
              "try:\n    s.sendall(b'status\\n')\n"
              "except BrokenPipeError:\n    pass  # refused before the request was read\n"
              "print(s.makefile('rb').readline().decode().strip())\n" % service.control)
    p = subprocess.run(["/usr/bin/python3", "-c", script], capture_output=True, text=True, timeout=10)
    assert p.returncode == 0, p.stderr
    answer = json.loads(p.stdout)
    assert answer["ok"] is False and answer["error"] == "PERMISSION_DENIED"
    # The service's log line may reach its file a moment after the answer.
    assert wait_for(lambda: "refused a client with uid 65534" in service.log(), timeout=10), service.log()


def test_second_service_on_the_same_socket_is_refused(service, profile_file):
    p = cli("run", "--profile", profile_file, "--control", service.control, "--state-dir", service.state_dir)
    assert p.returncode == 1
    assert one_error_line(p) == "m2mvpn: another service already answers at %s" % service.control
    assert cli("status", "--control", service.control).returncode == 0


def test_stale_socket_is_replaced(workdir, profile_file):
    ctl = os.path.join(workdir, "ctl")
    os.mkdir(ctl, 0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(os.path.join(ctl, "control.sock"))
    stale.close()  # the file stays, nobody listens: a crashed service
    svc = Service(workdir, profile_file)
    try:
        svc.wait_ready()
        assert cli("status", "--control", svc.control).returncode == 0
        assert svc.stop() == 0
    finally:
        svc.kill()


def test_m2mvpnd_is_the_same_service(workdir, profile_file):
    svc = Service(workdir, profile_file, binary=DAEMON)
    try:
        svc.wait_ready()
        st = json.loads(cli("status", "--json", "--control", svc.control).stdout)
        assert st["state"] == "idle"
        assert svc.stop() == 0
    finally:
        svc.kill()


def test_debug_log_has_level_and_subsystem(service):
    cli("switch", "no-such", "--control", service.control)
    service.stop()
    lines = service.log().splitlines()
    assert any(line.startswith("debug [api] ") for line in lines), lines
    assert any(line.startswith("info [service] ") for line in lines), lines


def test_without_verbose_there_are_no_debug_lines(workdir, profile_file):
    svc = Service(workdir, profile_file, verbose=False)
    try:
        svc.wait_ready()
        cli("switch", "no-such", "--control", svc.control)
        assert svc.stop() == 0
        log = svc.log()
        assert "info [service] " in log
        assert "debug" not in log
    finally:
        svc.kill()


def test_unload_a_profile(service):
    p = cli("unload", PROFILE_NAMES[0], "--control", service.control)
    assert p.returncode == 0, p.stderr
    # The next loaded profile becomes the active one.
    assert wait_for(lambda: _status(service)["profile"] == PROFILE_NAMES[1])
    p = cli("switch", PROFILE_NAMES[0], "--control", service.control)
    assert p.returncode == 1
    assert "no profile named '%s'" % PROFILE_NAMES[0] in one_error_line(p)
    p = cli("unload", "no-such", "--control", service.control)
    assert p.returncode == 1
    assert one_error_line(p).startswith("m2mvpn: unload refused: ")


def test_control_socket_answers_as_soon_as_it_exists(workdir, profile_file):
    """A client that finds the socket is never refused: the service listens
    from bind() on (the interop harness once saw "Connection refused" in the
    window between them). Raced 20 times with a connect the moment the name
    appears."""
    refused = 0
    for i in range(20):
        d = os.path.join(workdir, "race%d" % i)
        os.mkdir(d, 0o700)
        svc = Service(d, profile_file, verbose=False)
        try:
            assert wait_for(lambda: os.path.exists(svc.control) or svc.proc.poll() is not None,
                            timeout=10, step=0.0005), svc.log()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(svc.control)
            except ConnectionRefusedError:
                refused += 1
            finally:
                s.close()
        finally:
            svc.kill()
    assert refused == 0, "%d of 20 connects right after the socket appeared were refused" % refused
