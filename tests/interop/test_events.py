# SPDX-License-Identifier: Apache-2.0
"""Events as an application sees them: libm2mvpn driven through the Python
binding (bindings/python) in the client namespace, against the gateway.

AUTH_FAILED (docs/api/m2mvpn_event.md): when authentication fails the
application gets AUTH_FAILED with the error (AUTH_LOCAL: the gateway refused
us; AUTH_PEER: the gateway could not be verified) and the detail, just
before the STATE_CHANGED event of the same failure.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import charon as charonmod
import m2mvpn_client

LIB = os.environ.get("M2MVPN_LIB", "")
BINDING = Path(__file__).resolve().parents[2] / "bindings" / "python"
pytestmark = pytest.mark.skipif(not LIB or not Path(LIB).is_file(),
                                reason="M2MVPN_LIB (the built libm2mvpn) is not set")

# The application: load the profile, start the engine thread, connect, keep
# every event until the tunnel is idle again after a failure (or until the
# AUTH_FAILED event came argv[3] times), print them.
APP = r'''
import json, sys, threading, time
import m2mvpn

events, done = [], threading.Event()

def on_event(client, ev):
    events.append({"t": time.monotonic(), "type": m2mvpn.event_name(ev.type), "error": ev.error,
                   "error_name": m2mvpn.error_name(ev.error) if ev.error else "",
                   "detail": ev.detail, "state": m2mvpn.state_name(ev.state),
                   "old_state": m2mvpn.state_name(ev.old_state), "profile": ev.profile})
    if ev.type == m2mvpn.EventType.STATE_CHANGED and ev.state == m2mvpn.State.IDLE and ev.error:
        done.set()
    if sum(e["type"] == "AUTH_FAILED" for e in events) >= int(sys.argv[3]):
        done.set()

def log(level, subsystem, message):
    print(f"[{subsystem}] {message}", file=sys.stderr, flush=True)

with m2mvpn.Client(on_event=on_event, log=log, log_level=m2mvpn.LogLevel.DEBUG) as c:
    c.load_profile_file(sys.argv[1])
    c.start()
    c.connect()
    finished = done.wait(float(sys.argv[2]))
    c.stop()
print(json.dumps({"finished": finished, "events": events}))
'''


def run_app(topo, workdir: Path, prof: dict, timeout_s: float = 30, auth_failures: int = 1) -> list[dict]:
    pf = workdir / "profile.json"
    pf.write_text(json.dumps(prof))
    pf.chmod(0o600)
    app = workdir / "app.py"
    app.write_text(APP)
    env = dict(os.environ, M2MVPN_LIB=LIB, PYTHONPATH=str(BINDING), PYTHONDONTWRITEBYTECODE="1")
    proc = topo.client.popen(["/usr/bin/python3", str(app), str(pf), str(timeout_s),
                              str(auth_failures)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out, err = proc.communicate(timeout=timeout_s + 30)
    assert proc.returncode == 0, f"the application exited {proc.returncode}:\n{err[-4000:]}"
    res = json.loads(out.strip().splitlines()[-1])
    assert res["finished"], f"no failure within {timeout_s}s: {res['events']}\n{err[-4000:]}"
    return res["events"]


def auth_failed_then_idle(events: list[dict], error_name: str) -> dict:
    """The one AUTH_FAILED event, checked against the state change after it."""
    fails = [i for i, e in enumerate(events) if e["type"] == "AUTH_FAILED"]
    assert len(fails) == 1, events
    ev = events[fails[0]]
    assert ev["error_name"] == error_name and ev["error"] < 0, ev
    assert ev["profile"] == "interop" and ev["state"] == "connecting", ev
    nxt = events[fails[0] + 1]     # just before the state change of the same failure
    assert nxt["type"] == "STATE_CHANGED" and nxt["state"] == "idle", events
    assert (nxt["error"], nxt["detail"]) == (ev["error"], ev["detail"]), events
    return ev


def test_auth_failed_event_when_the_gateway_refuses_us(topology, charons, pki, workdir):
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"],
                                                        psk="the-gateway-has-another-psk-0123"),
                 name="gw")
    prof = m2mvpn_client.make_profile(pki, "psk", topo.gw_addr)
    ev = auth_failed_then_idle(run_app(topo, workdir, prof), "AUTH_LOCAL")
    assert "rejected our authentication (AUTHENTICATION_FAILED)" in ev["detail"], ev
    assert "but MAC mismatched" in gw.log_text(), gw.log_tail()


def test_auth_failed_event_when_the_gateway_is_not_trusted(topology, charons, pki, workdir):
    topo = topology("direct")
    charons(topo.gateway, charonmod.gateway_config(pki, conns=["ecdsa"], ecdsa_cert=pki.gw_untrusted),
            name="gw")
    prof = m2mvpn_client.make_profile(pki, "ecdsa", topo.gw_addr)
    ev = auth_failed_then_idle(run_app(topo, workdir, prof), "AUTH_PEER")
    assert "issuer" in ev["detail"] or "untrusted" in ev["detail"], ev


def test_auth_failed_event_on_every_always_on_attempt(topology, charons, pki, workdir):
    """Always-on still retries after an authentication failure, with the
    longer back-off of authentication failures (10 s, jittered by up to 20 %,
    instead of 1 s: lib/conn/conn.h), and each failed attempt is reported
    again."""
    topo = topology("direct")
    charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"],
                                                   psk="the-gateway-has-another-psk-0123"),
            name="gw")
    prof = m2mvpn_client.make_profile(pki, "psk", topo.gw_addr, mode="always-on")
    events = run_app(topo, workdir, prof, timeout_s=60, auth_failures=2)
    fails = [i for i, e in enumerate(events) if e["type"] == "AUTH_FAILED"]
    assert len(fails) == 2, events
    # A lower bound only (under load everything may take longer): the
    # retry waited for the authentication schedule, not the 1 s one.
    gap = events[fails[1]]["t"] - events[fails[0]]["t"]
    assert gap >= 10 * 0.8, (gap, events)
    for i in fails:
        assert events[i]["error_name"] == "AUTH_LOCAL", events[i]
        assert "AUTHENTICATION_FAILED" in events[i]["detail"], events[i]
    # The first one comes just before the state change to reconnecting.
    nxt = events[fails[0] + 1]
    assert nxt["type"] == "STATE_CHANGED" and nxt["state"] == "reconnecting", events
    assert (nxt["error"], nxt["detail"]) == (events[fails[0]]["error"], events[fails[0]]["detail"])
