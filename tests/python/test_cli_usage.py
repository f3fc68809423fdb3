# SPDX-License-Identifier: Apache-2.0
"""Command-line handling that needs no running service."""
import os

import pytest

import m2mvpn
from cli_helpers import CLI, DAEMON, cli, one_error_line

import subprocess


def test_help_lists_every_command():
    p = cli("--help")
    assert p.returncode == 0 and p.stderr == ""
    for word in ("run", "start", "stop", "connect", "disconnect", "switch", "unload", "login", "pin", "status"):
        assert "m2mvpn %s" % word in p.stdout
    assert "/run/m2mvpn/control.sock" in p.stdout


def test_version_is_the_library_version():
    p = cli("--version")
    assert p.returncode == 0
    assert p.stdout.strip() == "m2mvpn " + m2mvpn.version()


@pytest.mark.parametrize("argv,needle", [
    ([], "no command"),
    (["bogus"], "unknown command 'bogus'"),
    (["status", "--frob"], "unknown option '--frob'"),
    (["status", "extra"], "unexpected argument 'extra'"),
    (["status", "--control"], "needs a value"),
    (["switch"], "missing argument"),
    (["unload"], "missing argument"),
    (["connect", "a", "b"], "unexpected argument 'b'"),
    (["disconnect", "--json"], "does not apply"),
    (["run"], "--profile FILE is required"),
    (["start"], "--profile FILE is required"),
    (["login"], "--user U is required"),
    (["pin", "1234"], "unexpected argument"),  # a PIN never goes on the command line
])
def test_bad_usage_exits_2_with_one_line(argv, needle):
    p = cli(*argv)
    assert p.returncode == 2
    assert needle in one_error_line(p)
    assert p.stdout == ""


@pytest.mark.parametrize("argv,stdin", [
    (["status"], None),
    (["status", "--json"], None),
    (["connect"], None),
    (["connect", "atm-eu"], None),
    (["disconnect"], None),
    (["switch", "atm-eu"], None),
    (["unload", "atm-eu"], None),
    (["stop"], None),
    (["login", "--user", "bob"], "pw\n"),
    (["pin"], "1234\n"),
])
def test_client_commands_without_a_service(workdir, argv, stdin):
    sock = os.path.join(workdir, "nothing-here.sock")
    p = cli(*argv, "--control", sock, stdin=stdin)
    assert p.returncode == 3
    assert one_error_line(p) == "m2mvpn: cannot reach the service at %s: No such file or directory" % sock
    assert p.stdout == ""


def test_default_control_socket_is_named_in_the_error():
    if os.path.exists("/run/m2mvpn/control.sock"):
        pytest.skip("a service runs on this machine")
    p = cli("status")
    assert p.returncode == 3
    assert "/run/m2mvpn/control.sock" in one_error_line(p)


@pytest.mark.parametrize("stdin,needle", [
    ("", "no password given on standard input"),
    ("\n", "no password given"),
    ("x" * 300 + "\n", "longer than 256 bytes"),
])
def test_login_refuses_a_bad_password_before_connecting(workdir, stdin, needle):
    p = cli("login", "--user", "bob", "--control", os.path.join(workdir, "s.sock"), stdin=stdin)
    assert p.returncode == 1
    assert needle in one_error_line(p)


def test_pin_from_empty_stdin_is_refused(workdir):
    p = cli("pin", "--control", os.path.join(workdir, "s.sock"), stdin="")
    assert p.returncode == 1
    assert "no PIN given" in one_error_line(p)


def test_run_with_a_missing_profile_file_fails_with_one_line(workdir):
    missing = os.path.join(workdir, "missing.json")
    p = cli("run", "--profile", missing, "--control", os.path.join(workdir, "c.sock"),
            "--state-dir", os.path.join(workdir, "st"))
    assert p.returncode == 1
    assert one_error_line(p) == ("m2mvpn: cannot load profile %s: cannot read %s: No such file or directory"
                                 % (missing, missing))
    assert not os.path.exists(os.path.join(workdir, "c.sock"))


def test_start_with_a_missing_profile_file_fails_with_one_line(workdir):
    p = cli("start", "--profile", os.path.join(workdir, "missing.json"),
            "--control", os.path.join(workdir, "c.sock"), "--state-dir", os.path.join(workdir, "st"))
    assert p.returncode == 1
    assert "missing.json: No such file or directory" in one_error_line(p)


def test_start_with_an_invalid_profile_reports_the_reason(workdir):
    bad = os.path.join(workdir, "bad.json")
    with open(bad, "w") as f:
        f.write('{"version": 1, "name": ')
    p = cli("start", "--profile", bad, "--control", os.path.join(workdir, "c.sock"),
            "--state-dir", os.path.join(workdir, "st"))
    assert p.returncode == 1
    # Where in the file the JSON ends too early.
    assert one_error_line(p) == "m2mvpn: cannot load profile %s: line 1, column 24: unexpected end of input" % bad
    assert not os.path.exists(os.path.join(workdir, "st", "m2mvpn.pid"))


def test_m2mvpnd_help_and_usage():
    p = subprocess.run([DAEMON, "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "m2mvpnd --profile FILE" in p.stdout
    p = subprocess.run([DAEMON], capture_output=True, text=True)
    assert p.returncode == 2
    assert one_error_line(p) == "m2mvpn: m2mvpnd: --profile FILE is required"


def test_socket_folder_writable_by_others_is_refused(workdir, profile_file):
    open_dir = os.path.join(workdir, "open")
    os.mkdir(open_dir)
    os.chmod(open_dir, 0o777)
    p = cli("run", "--profile", profile_file, "--control", os.path.join(open_dir, "c.sock"),
            "--state-dir", os.path.join(workdir, "st"))
    assert p.returncode == 1
    assert "writable by other users" in one_error_line(p)


@pytest.mark.parametrize("mode", [0o1777, 0o1770, 0o720], ids=["1777", "1770", "0720"])
def test_socket_folder_writable_by_others_is_refused_even_sticky(workdir, profile_file, mode):
    """Sticky or not: others could still take the socket's name first."""
    open_dir = os.path.join(workdir, "open")
    os.mkdir(open_dir)
    os.chmod(open_dir, mode)
    p = cli("run", "--profile", profile_file, "--control", os.path.join(open_dir, "c.sock"),
            "--state-dir", os.path.join(workdir, "st"))
    assert p.returncode == 1
    assert one_error_line(p) == ("m2mvpn: folder %s is writable by other users: refusing to put "
                                 "the service's files there" % open_dir)
    assert not os.path.exists(os.path.join(open_dir, "c.sock"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another user")
@pytest.mark.parametrize("which", ["control", "state"])
def test_folder_of_another_user_is_refused(workdir, profile_file, which):
    theirs = os.path.join(workdir, "theirs")
    os.mkdir(theirs, 0o755)
    os.chown(theirs, 65534, 65534)
    control = os.path.join(theirs if which == "control" else workdir, "c.sock")
    state = theirs if which == "state" else os.path.join(workdir, "st")
    p = cli("run", "--profile", profile_file, "--control", control, "--state-dir", state)
    assert p.returncode == 1
    assert one_error_line(p) == ("m2mvpn: folder %s belongs to another user (uid 65534): refusing to "
                                 "put the service's files there" % theirs)


def test_socket_folder_that_is_a_symlink_is_refused(workdir, profile_file):
    """A symbolic link in the folder's place: whoever made it chose where the
    socket goes. Refused even when it points to a good folder."""
    good = os.path.join(workdir, "good")
    os.mkdir(good, 0o700)
    link = os.path.join(workdir, "link")
    os.symlink(good, link)
    p = cli("run", "--profile", profile_file, "--control", os.path.join(link, "c.sock"),
            "--state-dir", os.path.join(workdir, "st"))
    assert p.returncode == 1
    assert one_error_line(p) == ("m2mvpn: folder %s is a symbolic link: refusing to put the "
                                 "service's files there" % link)
    assert os.listdir(good) == []


@pytest.mark.parametrize("which", ["control", "state"])
def test_folder_below_one_writable_by_others_is_refused(workdir, profile_file, which):
    """Our folder is fine, but a folder above it others may write (no sticky
    bit): they could rename ours away and put theirs in its place."""
    above = os.path.join(workdir, "above")
    os.mkdir(above)
    os.chmod(above, 0o777)
    ours = os.path.join(above, "ours")
    os.mkdir(ours, 0o700)
    control = os.path.join(ours if which == "control" else workdir, "c.sock")
    state = ours if which == "state" else os.path.join(workdir, "st")
    p = cli("run", "--profile", profile_file, "--control", control, "--state-dir", state)
    assert p.returncode == 1
    assert one_error_line(p) == ("m2mvpn: folder %s (on the way to %s) is writable by other users: "
                                 "refusing to put the service's files there" % (above, ours))
    assert os.listdir(ours) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another user")
def test_folder_below_one_of_another_user_is_refused(workdir, profile_file):
    above = os.path.join(workdir, "theirs")
    os.mkdir(above, 0o755)
    ours = os.path.join(above, "ours")
    os.mkdir(ours, 0o700)
    os.chown(above, 65534, 65534)
    p = cli("run", "--profile", profile_file, "--control", os.path.join(ours, "c.sock"),
            "--state-dir", os.path.join(workdir, "st"))
    assert p.returncode == 1
    assert one_error_line(p) == ("m2mvpn: folder %s (on the way to %s) belongs to another user "
                                 "(uid 65534): refusing to put the service's files there"
                                 % (above, ours))


# A stand-in service: binds the control socket, drops to `uid`, then
# listens (SO_PEERCRED names whoever called listen()), records every byte it
# receives and answers every request with "ok".
_FAKE_SERVICE = """
import os, socket, sys
path, record, uid = sys.argv[1], sys.argv[2], int(sys.argv[3])
rec = open(record, "ab", buffering=0)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
if uid:
    os.setgid(uid); os.setuid(uid)
s.listen(4)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(2)
    try:
        data = c.recv(4096)
        rec.write(data)
        c.sendall(b'{"ok": true, "status": {"state": "idle"}}\\n')
    except OSError:
        pass
    c.close()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a stand-in service as another user")
@pytest.mark.parametrize("argv,stdin", [(["status"], None), (["login", "--user", "u"], "secret-pass\n")])
@pytest.mark.parametrize("uid", [65534, 0])
def test_client_talks_only_to_a_service_of_root_or_its_own_user(workdir, argv, stdin, uid):
    ctl = os.path.join(workdir, "ctl")
    os.mkdir(ctl, 0o700)
    sock, record = os.path.join(ctl, "control.sock"), os.path.join(workdir, "received")
    fake = subprocess.Popen(["/usr/bin/python3", "-c", _FAKE_SERVICE, sock, record, str(uid)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert fake.stdout.readline().strip() == "ready"
        p = cli(*argv, "--control", sock, stdin=stdin)
        with open(record, "rb") as f:
            received = f.read()
    finally:
        fake.kill()
        fake.wait()
    if uid == 0:
        # The same stand-in as root is served: the test can see a request.
        assert p.returncode == 0, p.stderr
        assert received.startswith(argv[0].encode())
    else:
        assert p.returncode == 3
        assert one_error_line(p) == ("m2mvpn: the service at %s runs as uid 65534, neither root nor "
                                     "our uid 0: not talking to it" % sock)
        assert received == b""  # nothing, above all no password, went to it


def _run_on_a_terminal(argv, typed, timeout=10):
    """Run argv with a pseudo-terminal as its stdin/stdout/stderr, type `typed`
    after the first output, and return (exit status, everything it showed)."""
    import pty
    import select
    import time
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(argv[0], argv)
    shown, sent = b"", False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        if shown and not sent:
            os.write(fd, typed)
            sent = True
    else:
        os.kill(pid, 9)  # never hang the suite on a stuck child
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


@pytest.mark.parametrize("argv,prompt", [(["pin"], "PIN: "), (["login", "--user", "bob"], "Password: ")])
def test_secret_prompt_on_a_terminal_does_not_echo(workdir, argv, prompt):
    sock = os.path.join(workdir, "none.sock")
    code, shown = _run_on_a_terminal([CLI, *argv, "--control", sock], b"S3cr3t-4242\n")
    assert shown.startswith(prompt), shown
    assert "S3cr3t-4242" not in shown  # echo was off while typing
    # The secret was read, then the (missing) service was tried.
    assert code == 3 and "cannot reach the service at %s" % sock in shown


def test_start_reports_the_service_start_up_error(workdir, profile_file):
    # The detached service fails before it serves: its reason comes back as
    # the one error line of `start`.
    bad_state = os.path.join(workdir, "missing-parent", "state")
    p = cli("start", "--profile", profile_file, "--control", os.path.join(workdir, "c.sock"),
            "--state-dir", bad_state)
    assert p.returncode == 1
    assert one_error_line(p) == "m2mvpn: cannot create folder %s: No such file or directory" % bad_state
