# SPDX-License-Identifier: Apache-2.0
"""The Client class and the raw calls behind it."""
import ctypes
import gc
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time

import pytest

import m2mvpn
from m2mvpn import ErrorCode, LogLevel, State, _native
from binding_helpers import PROFILE, profiles


def raises_code(code):
    """pytest.raises for an M2mvpnError with this code; the caller checks detail."""
    class _Ctx:
        def __enter__(self):
            self._r = pytest.raises(m2mvpn.M2mvpnError)
            self.info = self._r.__enter__()
            return self.info

        def __exit__(self, *exc):
            ok = self._r.__exit__(*exc)
            assert self.info.value.code == code, str(self.info.value)
            return ok
    return _Ctx()


# ------------------------------------------------------------- lifecycle

def test_version_is_the_library_version():
    v = m2mvpn.version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", v)
    with m2mvpn.Client() as c:
        assert c.status()["version"] == v


def test_create_and_free_many_handles():
    clients = [m2mvpn.Client() for _ in range(20)]
    assert len({c.handle.value for c in clients}) == 20
    for c in clients:
        c.close()
        assert c.closed
        c.close()  # idempotent


def test_closed_client_refuses_calls():
    c = m2mvpn.Client()
    c.close()
    with pytest.raises(ValueError):
        c.status()


def test_raw_new_validates_arguments():
    lib = _native.load()
    assert lib.m2mvpn_new(None, None, None) == ErrorCode.INVAL
    short = _native.Callbacks(4, _native.EVENT_CALLBACK())
    h = ctypes.c_void_p()
    assert lib.m2mvpn_new(ctypes.byref(short), None, ctypes.byref(h)) == ErrorCode.INVAL
    assert h.value is None  # untouched on failure
    assert lib.m2mvpn_new(None, None, ctypes.byref(h)) == 0
    lib.m2mvpn_free(h)
    lib.m2mvpn_free(None)  # NULL is fine


def test_raw_calls_refuse_a_non_handle():
    lib = _native.load()
    junk = ctypes.create_string_buffer(256)
    assert lib.m2mvpn_connect(ctypes.cast(junk, ctypes.c_void_p)) == ErrorCode.BADHANDLE
    assert lib.m2mvpn_connect(None) == ErrorCode.BADHANDLE
    assert lib.m2mvpn_last_error(None) == b"not a valid m2mvpn handle"


# ---------------------------------------------------------------- status

def test_status_json_of_a_fresh_handle(client):
    st = client.status()
    assert st["state"] == "idle"
    assert st["profile"] is None
    assert st["last_error"]["code"] == 0
    assert set(st) >= {"state", "profile", "gateway", "last_error", "version"}
    assert client.status_json_text().startswith("{")


def test_get_status_snapshot(client):
    st = client.status_snapshot()
    assert st.state == State.IDLE
    assert st.struct_size == ctypes.sizeof(_native.Status)
    assert (st.bytes_in, st.packets_out, st.connected_since) == (0, 0, 0)


def test_get_status_with_an_older_smaller_struct(client):
    lib = _native.load()
    st = _native.Status()
    ctypes.memset(ctypes.byref(st), 0x5a, ctypes.sizeof(st))
    small = _native.Status.profile.offset  # a caller that knows only state/last_error
    st.struct_size = small
    assert lib.m2mvpn_get_status(client.handle, ctypes.byref(st)) == 0
    assert st.state == State.IDLE and st.last_error == 0
    assert st.profile[:1] == b"\x5a"  # nothing written past what the caller declared
    st.struct_size = 4
    assert lib.m2mvpn_get_status(client.handle, ctypes.byref(st)) == ErrorCode.INVAL


# ------------------------------------------------------ argument checks

def test_argument_validation(client):
    with raises_code(ErrorCode.INVAL) as e:
        client.switch_profile("")
    assert "name" in e.value.detail
    with raises_code(ErrorCode.NOPROFILE) as e:
        client.switch_profile("nowhere")
    assert "nowhere" in e.value.detail and e.value.name == "NOPROFILE"
    assert client.last_error == e.value.detail
    with raises_code(ErrorCode.INVAL):
        client.enter_pin(b"")
    with raises_code(ErrorCode.INVAL):
        client.enter_pin(b"x" * 257)
    with raises_code(ErrorCode.INVAL):
        client.enter_pin(b"12\x0034")
    with raises_code(ErrorCode.INVAL):
        client.set_credentials("u", "p" * 257)
    with raises_code(ErrorCode.INVAL):
        client.set_log(lambda *a: None, 9)
    with raises_code(ErrorCode.INVAL):
        client.load_profile_json("")
    with raises_code(ErrorCode.INVAL):
        client.load_profile_file("")
    with raises_code(ErrorCode.NOPROFILE):
        client.connect()


def test_python_side_type_checks(client):
    with pytest.raises(TypeError):
        client.switch_profile(42)
    with pytest.raises(ValueError):
        client.switch_profile("a\0b")  # C would silently see "a"
    with pytest.raises(TypeError):
        client.enter_pin(1234)
    with pytest.raises(TypeError):
        client.set_log(print, "debug")


def test_profile_file_that_does_not_exist(client, tmp_path):
    missing = tmp_path / "missing.json"
    with raises_code(ErrorCode.IO) as e:
        client.load_profile_file(missing)
    assert str(missing) in e.value.detail and "No such file or directory" in e.value.detail, e.value.detail
    assert client.status()["profile"] is None


def test_profile_load_and_switch(client, tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps(profiles("rig-a", "rig-b")))
    client.load_profile_file(f)
    assert client.status()["profile"] == "rig-a"
    client.switch_profile("rig-b")  # starts the engine thread, which runs the queued switch
    deadline = time.monotonic() + 5
    while client.status()["profile"] != "rig-b" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.status()["profile"] == "rig-b"
    with raises_code(ErrorCode.PROFILE):
        client.load_profile_json('{"version": 1, "name": "x", "bogus_key": 1}')


def test_bad_profile_changes_nothing(client):
    client.load_profile_json(PROFILE)
    with pytest.raises(m2mvpn.M2mvpnError) as e:
        client.load_profile_json('{"version": 1, "name": "rig-a", "gateways": [{"host": "x", "port": 70000}]}')
    assert e.value.code in (ErrorCode.PROFILE, ErrorCode.JSON) and e.value.detail
    assert client.status()["profile"] == "rig-a"


# ---------------------------------------------------------- engine drive

def test_external_loop(client):
    fd = client.fileno()
    assert fd >= 0
    assert client.timeout_ms() == -1  # no profile, nothing queued: no timer
    client.process()
    assert client.timeout_ms() == -1
    # Once driven from outside, the library thread is refused.
    with raises_code(ErrorCode.BUSY):
        client.start()
    # A queued command makes the fd readable; process() consumes it.
    client.disconnect()
    assert client.timeout_ms() == 0
    assert select.select([fd], [], [], 2.0)[0] == [fd]
    client.process()
    assert select.select([fd], [], [], 0)[0] == []


def test_engine_thread_start_stop(client):
    client.start()
    with raises_code(ErrorCode.BUSY):
        client.start()
    with raises_code(ErrorCode.BUSY):
        client.fileno()
    with raises_code(ErrorCode.BUSY):
        client.process()
    client.disconnect()  # control calls work while the thread runs
    client.stop()
    with raises_code(ErrorCode.STATE):
        client.stop()
    client.start()  # and again
    client.stop()


def _threads():
    return len(os.listdir("/proc/self/task"))


def _settled_threads(timeout=5.0):
    """The thread count once it has stayed the same for 0.3 s: a thread an
    earlier test joined can stay listed for a moment after the join (under
    qemu-user, where the emulator ends the host thread after the guest's
    exit, for longer)."""
    deadline = time.monotonic() + timeout
    n, since = _threads(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.01)
        m = _threads()
        if m != n:
            n, since = m, time.monotonic()
        elif time.monotonic() - since >= 0.3:
            break
    return n


def _wait_threads(want, timeout=5.0):
    deadline = time.monotonic() + timeout
    while _threads() != want and time.monotonic() < deadline:
        time.sleep(0.01)
    return _threads()


def test_free_with_a_running_engine_thread():
    before = _settled_threads()
    c = m2mvpn.Client()
    c.load_profile_json(PROFILE)
    c.start()
    assert _wait_threads(before + 1) == before + 1  # the engine thread
    c.close()  # stops and joins it
    assert _wait_threads(before) == before
    assert c.closed
    with pytest.raises(ValueError):
        c.status()


# -------------------------------------------------------------- callbacks

def test_log_callback_receives_finished_lines():
    lines = []
    with m2mvpn.Client(log=lambda lvl, sub, msg: lines.append((lvl, sub, msg)), log_level=LogLevel.DEBUG) as c:
        with pytest.raises(m2mvpn.M2mvpnError):
            c.switch_profile("no-such-profile")
    assert lines, "no log line arrived"
    lvl, sub, msg = lines[-1]
    assert lvl == LogLevel.DEBUG and isinstance(lvl, LogLevel)
    assert sub == "api"
    assert "no-such-profile" in msg and "\n" not in msg and "%" not in msg


def test_log_level_filters_and_hook_can_be_removed():
    lines = []
    with m2mvpn.Client(log=lambda *a: lines.append(a), log_level=LogLevel.ERROR) as c:
        with pytest.raises(m2mvpn.M2mvpnError):
            c.switch_profile("x")
        assert lines == []  # the failure is logged at debug only
        c.set_log(lambda *a: lines.append(a), LogLevel.DEBUG)
        c.set_log(None)
        with pytest.raises(m2mvpn.M2mvpnError):
            c.switch_profile("x")
    assert lines == []


def test_callbacks_survive_garbage_collection():
    lines = []

    def make():
        # Callables only the Client references.
        return m2mvpn.Client(log=lambda lvl, sub, msg: lines.append(msg), log_level=LogLevel.DEBUG,
                             on_event=lambda c, ev: None)
    c = make()
    gc.collect()
    with pytest.raises(m2mvpn.M2mvpnError):
        c.switch_profile("after-gc")
    c.close()
    assert any("after-gc" in m for m in lines)


def test_secret_is_not_logged():
    lines = []
    with m2mvpn.Client(log=lambda lvl, sub, msg: lines.append(msg), log_level=LogLevel.DEBUG) as c:
        with raises_code(ErrorCode.INVAL):
            c.enter_pin(b"9876\x005432")
        c.set_credentials("bob", "Tr0ub4dor&3")
        c.enter_pin(b"24681357")
        c.fileno()
        c.process()
    joined = "\n".join(lines)
    for secret in ("9876", "5432", "Tr0ub4dor", "24681357"):
        assert secret not in joined


# Runs in a private network namespace (only "lo"): the connect attempt to
# 127.0.0.1:1 can neither reach nor change the host's network.
_EVENT_PROGRAM = """
import ctypes, json, sys, threading
import m2mvpn
from m2mvpn import EventType, _native
events, got = [], threading.Event()
def on_event(client, ev):
    events.append(ev)
    if ev.type == EventType.STATE_CHANGED:
        got.set()
with m2mvpn.Client(on_event=on_event) as c:
    c.load_profile_json(json.loads(sys.argv[1]))
    c.start()
    c.connect()
    arrived = got.wait(10)
    c.disconnect()
    c.stop()
first = next((e for e in events if e.type == EventType.STATE_CHANGED), None)
print(json.dumps({"arrived": arrived, "sizeof_event": ctypes.sizeof(_native.Event),
                  "first": None if first is None else
                  [int(first.old_state), int(first.state), first.profile, first.struct_size]}))
"""


def test_event_callback_after_a_state_change():
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs root, unshare and ip: the connect attempt must stay in a private network namespace")
    p = subprocess.run(["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                        sys.executable, "-c", _EVENT_PROGRAM, json.dumps(PROFILE)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["arrived"], "no STATE_CHANGED event after connect"
    old, new, profile, size = out["first"]
    assert (old, new) == (State.IDLE, State.CONNECTING)
    assert profile == PROFILE["name"]
    assert size == out["sizeof_event"]


def test_secret_arguments_accept_bytearray_and_check_types(client):
    # Every accepted type reaches the library (which queues the PIN); other
    # types do not.
    for pin in ("1234", b"1234", bytearray(b"1234")):
        client.enter_pin(pin)
    with pytest.raises(TypeError):
        client.enter_pin(1234)
    with pytest.raises(TypeError):
        client.set_credentials("u", 1234)
    with pytest.raises(ValueError):
        client.set_credentials("u", bytearray(b"pa\0ss"))
    with raises_code(ErrorCode.INVAL):
        client.enter_pin(bytearray(b"12\x0034"))


def test_unload_profile(client):
    client.load_profile_json(profiles("rig-a", "rig-b"))
    with raises_code(ErrorCode.INVAL):
        client.unload_profile("")
    with raises_code(ErrorCode.NOPROFILE):
        client.unload_profile("nowhere")
    client.unload_profile("rig-a")
    client.fileno()
    deadline = time.monotonic() + 5
    while client.status()["profile"] != "rig-b" and time.monotonic() < deadline:
        client.run_once(0.1)
    assert client.status()["profile"] == "rig-b"
    with raises_code(ErrorCode.NOPROFILE):
        client.switch_profile("rig-a")


def test_set_credentials_is_accepted(client):
    client.load_profile_json(dict(PROFILE, auth={"method": "eap",
                                                 "eap": {"type": "mschapv2", "identity": "dev1"}}))
    client.set_credentials("dev1", "Tr0ub4dor&3")


def test_bind_key_reports_the_reason(tmp_path):
    """m2mvpn_bind_key through the binding: a bad source list and a file
    without a key are refused with the library's reason; a real key binds."""
    with pytest.raises(m2mvpn.M2mvpnError) as e:
        m2mvpn.bind_key("/etc/machine-id", str(tmp_path / "k.bound"), "serial-number")
    assert e.value.code == ErrorCode.INVAL and "unknown fingerprint source 'serial-number'" in e.value.detail
    with pytest.raises(m2mvpn.M2mvpnError) as e:
        m2mvpn.bind_key("/etc/machine-id", str(tmp_path / "k.bound"), "machine-id")
    assert e.value.code == ErrorCode.CERT and "no PEM private key" in e.value.detail
    key = tmp_path / "k.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", str(key)], check=True, capture_output=True)
    (tmp_path / "serial").write_text("SN-1\n")
    m2mvpn.bind_key(key, tmp_path / "k.bound", "file:" + str(tmp_path / "serial"))  # os.PathLike too
    assert (tmp_path / "k.bound").read_bytes().startswith(b"M2MVPNBK")


def test_set_state_dir_checks_the_folder(tmp_path):
    """m2mvpn_set_state_dir through the binding (1.2): a folder is taken, a
    file or a missing path is refused with the reason."""
    with m2mvpn.Client() as c:
        c.set_state_dir(tmp_path)
        with raises_code(ErrorCode.INVAL) as e:
            c.set_state_dir(tmp_path / "missing")
        assert "not a folder" in str(e.value)


def test_decommission_needs_an_enrolled_device():
    """m2mvpn_decommission through the binding (1.3): without a bootstrap
    running there is nothing to revoke: STATE, with the reason."""
    with m2mvpn.Client() as c:
        with raises_code(ErrorCode.STATE) as e:
            c.decommission()
        assert "not an enrolled managed device" in str(e.value)
    assert m2mvpn.EventType.DECOMMISSIONED == 11
    assert ErrorCode.DECOMMISSION == -30
