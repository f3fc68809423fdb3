# SPDX-License-Identifier: Apache-2.0
"""`m2mvpn start` / `m2mvpn stop`: the detached service."""
import json
import os
import signal

import pytest

from cli_helpers import answers, cli, one_error_line, process_gone, wait_for


@pytest.fixture
def dirs(workdir):
    d = {"control": os.path.join(workdir, "ctl", "control.sock"), "state": os.path.join(workdir, "state")}
    yield d
    # Whatever happened in the test: no detached service outlives it.
    try:
        with open(os.path.join(d["state"], "m2mvpn.pid")) as f:
            os.kill(int(f.read()), signal.SIGKILL)
    except (OSError, ValueError):
        pass


def pid_of(dirs):
    with open(os.path.join(dirs["state"], "m2mvpn.pid")) as f:
        return int(f.read())


def test_start_status_stop(dirs, profile_file):
    p = cli("start", "--profile", profile_file, "--control", dirs["control"], "--state-dir", dirs["state"], "-v")
    assert p.returncode == 0, p.stderr
    pid = pid_of(dirs)
    assert not process_gone(pid)
    assert "pid %d" % pid in p.stdout
    # The service is detached: a session of its own, and not our child.
    assert os.getsid(pid) != os.getsid(0)
    with open("/proc/%d/stat" % pid) as f:
        assert int(f.read().rsplit(")", 1)[1].split()[1]) != os.getpid()
    st = json.loads(cli("status", "--json", "--control", dirs["control"]).stdout)
    assert st["state"] == "idle"

    again = cli("start", "--profile", profile_file, "--control", dirs["control"], "--state-dir", dirs["state"])
    assert again.returncode == 1
    assert "already answers" in one_error_line(again)

    p = cli("stop", "--control", dirs["control"], "--state-dir", dirs["state"])
    assert p.returncode == 0, p.stderr
    assert wait_for(lambda: process_gone(pid), timeout=5)
    assert not answers(dirs["control"])
    assert not os.path.exists(os.path.join(dirs["state"], "m2mvpn.pid"))
    with open(os.path.join(dirs["state"], "m2mvpn.log")) as f:
        log = f.read()
    assert "stopping (stop request)" in log and "debug [service]" in log

    p = cli("stop", "--control", dirs["control"], "--state-dir", dirs["state"])
    assert p.returncode == 3
    assert "cannot reach the service" in one_error_line(p)


def test_start_with_relative_paths(dirs, profile_file, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    p = cli("start", "--profile", os.path.basename(profile_file), "--control", "ctl/control.sock",
            "--state-dir", "state")
    assert p.returncode == 0, p.stderr
    assert cli("status", "--control", "ctl/control.sock").returncode == 0
    assert cli("stop", "--control", "ctl/control.sock", "--state-dir", "state").returncode == 0


def test_detached_service_stops_on_sigterm(dirs, profile_file):
    assert cli("start", "--profile", profile_file, "--control", dirs["control"],
               "--state-dir", dirs["state"]).returncode == 0
    pid = pid_of(dirs)
    os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: process_gone(pid), timeout=10)
    assert not os.path.exists(dirs["control"])
