# SPDX-License-Identifier: Apache-2.0
"""The test-rig API: load_profile, wait_for_state, events, switch_profile,
and the package install (pyproject.toml)."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import m2mvpn
from m2mvpn import EventType, State
from binding_helpers import PROFILE, profiles

# Set by meson for a cross build run under qemu-user: pip installs into a venv of the host's Python.
on_host_only = pytest.mark.skipif(bool(os.environ.get("M2MVPN_TEST_EMULATED")),
                                  reason="pip installs into a venv of the host's Python (not under qemu-user)")


ROOT = Path(__file__).resolve().parents[3]
BINDING = ROOT / "bindings" / "python"


# ------------------------------------------------------------ load_profile

def test_load_profile_takes_a_path_or_a_dict(tmp_path):
    f = tmp_path / "two.json"
    f.write_text(json.dumps(profiles("rig-a", "rig-b")))
    for source in (str(f), f):
        with m2mvpn.Client() as c:
            c.load_profile(source)
            assert c.status()["profile"] == "rig-a"
    with m2mvpn.Client() as c:
        c.load_profile(dict(PROFILE, name="from-dict"))
        assert c.status()["profile"] == "from-dict"


def test_load_profile_refuses_other_types_and_bad_profiles(client, tmp_path):
    with pytest.raises(TypeError):
        client.load_profile(42)
    with pytest.raises(TypeError):
        client.load_profile(b"/etc/hostname")
    with pytest.raises(m2mvpn.M2mvpnError) as e:
        client.load_profile(dict(PROFILE, typo_key=1))
    assert e.value.name == "PROFILE" and "typo_key" in e.value.detail
    with pytest.raises(m2mvpn.M2mvpnError) as e:
        client.load_profile(tmp_path / "none.json")
    assert e.value.name == "IO"


def test_switch_profile(client):
    client.load_profile(profiles("rig-a", "rig-b"))
    client.switch_profile("rig-b")
    assert client.wait_for_state("idle", timeout=5)["state"] == "idle"
    deadline = time.monotonic() + 5
    while client.status()["profile"] != "rig-b" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.status()["profile"] == "rig-b"
    with pytest.raises(m2mvpn.M2mvpnError) as e:
        client.switch_profile("rig-c")
    assert e.value.name == "NOPROFILE" and "rig-c" in e.value.detail


# --------------------------------------------------------- wait_for_state

def test_wait_for_state_returns_the_status_at_once_when_there(client):
    client.load_profile(PROFILE)
    st = client.wait_for_state("idle", timeout=1)
    assert st["state"] == "idle" and st["profile"] == PROFILE["name"]
    assert client.wait_for_state(State.IDLE, timeout=0)["state"] == "idle"


def test_wait_for_state_times_out_with_the_last_status(client):
    client.load_profile(PROFILE)  # manual: never connects by itself
    t0 = time.monotonic()
    with pytest.raises(m2mvpn.StateTimeout) as e:
        client.wait_for_state("connected", timeout=0.3)
    assert time.monotonic() - t0 >= 0.3
    assert isinstance(e.value, TimeoutError)
    assert e.value.wanted == "connected" and e.value.timeout == 0.3
    assert e.value.status["state"] == "idle" and e.value.status["profile"] == PROFILE["name"]
    assert e.value.last_error["code"] == 0
    assert str(e.value) == "state 'connected' not reached within 0.3 s: the state is 'idle'; no error reported"


def test_wait_for_state_checks_its_arguments(client):
    with pytest.raises(ValueError, match="unknown state 'up'"):
        client.wait_for_state("up", timeout=1)
    with pytest.raises(ValueError):
        client.wait_for_state("idle", timeout=-1)
    with pytest.raises(TypeError):
        client.wait_for_state(None, timeout=1)


# ----------------------------------------------------------------- events

def test_events_is_empty_without_activity(client):
    assert list(client.events()) == []
    assert client.next_event(timeout=0.05) is None


# Runs in a private network namespace (only "lo"): the connect attempt to
# 127.0.0.1:1 stays there. One retransmission 0.2 s apart, then TIMEOUT.
_RIG_PROGRAM = r"""
import json, sys, time
import m2mvpn

profile = json.loads(sys.argv[1])
profile["ike"] = {"retransmit_timeout_s": 0.2, "retransmit_base": 1.0, "retransmit_tries": 1}
out = {}
for mode in ("thread", "external"):
    with m2mvpn.Client(auto_start=(mode == "thread")) as c:
        c.load_profile(profile)
        if mode == "external":
            c.fileno()           # the application's own loop: waits drive it
        c.connect()
        try:
            c.wait_for_state("connected", timeout=4)
            out[mode] = {"connected": True}
            continue
        except m2mvpn.StateTimeout as e:
            err = e
        evs = list(c.events(timeout=0))
        out[mode] = {
            "state": err.status["state"], "last_error": err.last_error["name"],
            "message": str(err),
            "events": [[ev.name, ev.state_name, ev.error_name, type(ev).__name__] for ev in evs],
            "times_ordered": all(a.time <= b.time for a, b in zip(evs, evs[1:])),
        }
print(json.dumps(out))
"""


def test_wait_for_state_and_events_on_a_failing_connect():
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs root, unshare and ip: the connect attempt must stay in a private network namespace")
    p = subprocess.run(["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                        sys.executable, "-c", _RIG_PROGRAM, json.dumps(PROFILE)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    for mode in ("thread", "external"):
        r = out[mode]
        assert "connected" not in r, r
        # Manual mode: after the failure it stays idle, with the error kept
        # (TIMEOUT, or NETWORK where the namespace cannot even send).
        assert r["state"] == "idle" and r["last_error"] in ("TIMEOUT", "NETWORK"), r
        assert re.fullmatch(r"state 'connected' not reached within 4 s: the state is 'idle'; "
                            r"last error %s: .+" % r["last_error"], r["message"]), r["message"]
        assert r["events"][0] == ["STATE_CHANGED", "connecting", "", "Event"], r
        assert ["STATE_CHANGED", "idle", r["last_error"], "Event"] in r["events"], r
        assert r["times_ordered"]


def test_event_dataclass_names():
    ev = m2mvpn.Event(type=EventType.AUTH_FAILED, error=m2mvpn.ErrorCode.AUTH_LOCAL, detail="d",
                      state=State.CONNECTING, old_state=State.CONNECTING, profile="p", struct_size=0)
    assert (ev.name, ev.error_name, ev.state_name) == ("AUTH_FAILED", "AUTH_LOCAL", "connecting")


# ----------------------------------------------------------------- package

def _meson_version():
    text = (ROOT / "meson.build").read_text()
    return re.search(r"project\('m2mvpn',[^)]*?version:\s*'([^']+)'", text, re.S).group(1)


def test_versions_agree():
    pyproject = (BINDING / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1) == _meson_version()
    assert m2mvpn.__version__ == _meson_version()


@on_host_only
def test_pip_installs_the_package_offline(tmp_path):
    """`pip install bindings/python` into a venv, with no network: the
    installed copy (not the source tree) imports and drives the library."""
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True,
                   timeout=120)
    py = venv / "bin" / "python"
    # Without the source tree on the path (other entries, such as the TSan
    # run's preloading sitecustomize, stay).
    keep = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
            if p and Path(p).resolve() != BINDING.resolve()]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(keep))
    src = tmp_path / "src"  # pip builds in place: keep the tree clean
    shutil.copytree(BINDING, src, ignore=shutil.ignore_patterns("tests", "__pycache__", "build", "*.egg-info"))
    p = subprocess.run([str(py), "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
                        "--disable-pip-version-check", str(src)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    p = subprocess.run([str(py), "-c", "import m2mvpn, json; c = m2mvpn.Client(); "
                        "print(json.dumps([m2mvpn.__file__, m2mvpn.version(), c.status()['state']]))"],
                       capture_output=True, text=True, timeout=60, env=env, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    where, lib_version, state = json.loads(p.stdout)
    assert where.startswith(str(venv)) and "site-packages" in where, where
    assert lib_version == m2mvpn.version() and state == "idle"
    assert (Path(where).parent / "py.typed").is_file()
