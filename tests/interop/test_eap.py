# SPDX-License-Identifier: Apache-2.0
"""EAP in IKE_AUTH (RFC 7296 §2.16) against strongSwan: EAP-MSCHAPv2 and
EAP-MD5 connect and carry traffic; a wrong password is refused once (one
IKE SA, one IKE_SA_INIT, nothing sent after the refusal) and never retried;
the password given by `m2mvpn login` (stdin) and, in test_events.py style,
through CREDENTIALS_REQUIRED and m2mvpn_set_credentials(); no secret in any
log at the most verbose level.
"""

from __future__ import annotations

import time

import pytest

import charon as charonmod
import m2mvpn_client
import netlab
import pki as pkimod
from test_tunnel import (PROTECTED, binary_or_skip, disconnect_and_check, link_exists,
                         ping_counted_by_gateway, wait_until)

pytestmark = pytest.mark.needs_m2mvpn

WRONG_PASSWORD = "not-the-eap-password-4711"


def gw_conn_for(eap_type: str) -> str:
    return "eap" if eap_type == "mschapv2" else "eap-md5"


def assert_no_secret(text: str, *secrets: str) -> None:
    for s in secrets:
        assert s not in text, f"a secret ({len(s)} characters) appears in the log"


@pytest.mark.parametrize("eap_type", ["mschapv2", "md5"])
def test_eap_connects_and_carries_traffic(topology, charons, pki, workdir, eap_type):
    binary = binary_or_skip()
    topo = topology("direct")
    conn = gw_conn_for(eap_type)
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=[conn]), name="gw")
    profile = m2mvpn_client.make_profile(pki, "eap", topo.gw_addr, eap_type=eap_type)
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        client.connect()
        st = client.wait_for_state("connected", timeout_s=20)
        assert st["last_error"]["code"] == 0, st
        sa = gw.wait_for_sa(conn, "net", timeout_s=10)
        # The gateway authenticated us by EAP with this identity and method.
        assert sa.get("remote-eap-id") == charonmod.EAP_IDENTITY, sa
        want = "EAP_MSCHAPV2" if eap_type == "mschapv2" else "EAP_MD5"
        log = gw.log_text()
        assert f"EAP method {want} succeeded" in log, gw.log_tail()
        ping_counted_by_gateway(topo, gw, conn)
        disconnect_and_check(topo, gw, client)
        assert_no_secret(client.log_path.read_text(errors="replace"), charonmod.EAP_PASSWORD)


def client_to_gw(cap: netlab.Capture, gw_addr: str) -> list[str]:
    """Every datagram our client sent to the gateway (IKE on 500 and 4500)."""
    return cap.read(f"udp and dst host {gw_addr} and (dst port 500 or dst port 4500)", check=False)


@pytest.mark.parametrize("eap_type", ["mschapv2", "md5"])
def test_wrong_password_is_refused_once_and_waits_for_login(topology, charons, pki, workdir, eap_type):
    """Always-on with a wrong password: AUTH_LOCAL after one attempt (one
    IKE_SA_INIT, one IKE SA at the gateway), nothing sent after the refusal
    and no retry; `m2mvpn login` with the right password (stdin) then
    connects. No password appears in the client's verbose log."""
    binary = binary_or_skip()
    topo = topology("direct")
    conn = gw_conn_for(eap_type)
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=[conn]), name="gw")
    profile = m2mvpn_client.make_profile(pki, "eap", topo.gw_addr, eap_type=eap_type,
                                         mode="always-on", eap_password=WRONG_PASSWORD)
    with netlab.Capture(topo.client, "eth0", workdir / "eap.pcap") as cap:
        with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
            st = wait_until("idle with an error after the wrong password",
                            lambda: (s := client.status())["state"] == "idle"
                            and s["last_error"]["code"] != 0 and s, timeout_s=30)
            err = st["last_error"]
            assert err["name"] == "AUTH_LOCAL", st
            if eap_type == "mschapv2":
                assert "E=691" in err["detail"] and "wrong user name or password" in err["detail"], st
            else:
                assert "EAP-Failure" in err["detail"] or "AUTHENTICATION_FAILED" in err["detail"], st
            sent = len(client_to_gw(cap, topo.gw_addr))
            # Always-on would retry after 1 s, 2 s, ...: wait past several
            # back-off steps and check that nothing more left the client.
            time.sleep(5)
            later = client_to_gw(cap, topo.gw_addr)
            assert len(later) == sent, later[sent:]
            st = client.status()
            assert st["state"] == "idle" and st["last_error"]["name"] == "AUTH_LOCAL", st
            assert_no_secret(__import__("json").dumps(st), WRONG_PASSWORD, charonmod.EAP_PASSWORD)
            # Reported once: one AUTH_FAILED event, then the wait for credentials.
            log = client.log_path.read_text(errors="replace")
            assert log.count("event AUTH_FAILED") == 1, client.log_tail()
            assert "needs a user name and password" in log, client.log_tail()
            inits = cap.read(f"udp and dst host {topo.gw_addr} and dst port 500", check=False)
            assert len([p for p in inits if "ikev2_init" in p]) == 1, inits
            # The gateway saw one IKE_SA_INIT and refused the EAP credentials.
            glog = gw.log_text()
            assert glog.count("parsed IKE_SA_INIT request") == 1, gw.log_tail()
            # The right password through the CLI (stdin): the waiting
            # always-on profile connects at once.
            client.login(charonmod.EAP_IDENTITY, charonmod.EAP_PASSWORD)
            client.wait_for_state("connected", timeout_s=20)
            ping_counted_by_gateway(topo, gw, conn, count=3)
            client.stop()
            log = client.log_path.read_text(errors="replace")
            assert "EAP credentials set for 'dev1'" in log, client.log_tail()
            assert_no_secret(log, WRONG_PASSWORD, charonmod.EAP_PASSWORD)


def test_refused_password_is_not_resent_after_a_reload(topology, charons, pki, workdir):
    """A reload (SIGHUP) of the same profile text makes a new profile in the
    engine; the password the gateway refused stays refused (no IKE_SA_INIT,
    nothing sent: an account must not lock because the service reloaded).
    A reload that changes the password makes the next attempt at once."""
    import json
    import signal
    binary = binary_or_skip()
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["eap"]), name="gw")
    profile = m2mvpn_client.make_profile(pki, "eap", topo.gw_addr, mode="always-on",
                                         eap_password=WRONG_PASSWORD)
    with netlab.Capture(topo.client, "eth0", workdir / "eap.pcap") as cap:
        with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
            wait_until("refused", lambda: (s := client.status())["state"] == "idle"
                       and s["last_error"]["name"] == "AUTH_LOCAL" and s, timeout_s=30)
            sent = len(client_to_gw(cap, topo.gw_addr))
            for n in (1, 2):
                # The same text again (a new file, as an editor writes it).
                tmp = client.profile_path.with_suffix(".new")
                tmp.write_text(json.dumps(profile, indent=2))
                tmp.chmod(0o600)
                tmp.replace(client.profile_path)
                client.proc.send_signal(signal.SIGHUP)
                wait_until("the reload taken",
                           lambda: client.status()["service"]["reload"]["taken"] == n)
                time.sleep(4)  # past the first back-off steps of always-on
                later = client_to_gw(cap, topo.gw_addr)
                assert len(later) == sent, later[sent:]
            assert gw.log_text().count("parsed IKE_SA_INIT request") == 1, gw.log_tail()
            log = client.log_path.read_text(errors="replace")
            assert log.count("event AUTH_FAILED") == 1, client.log_tail()
            assert "was refused before and has not changed" in log, client.log_tail()
            # The password changed in the file: tried at once, and it connects.
            fixed = dict(profile, auth=dict(profile["auth"], eap=dict(profile["auth"]["eap"],
                                                                      password=charonmod.EAP_PASSWORD)))
            tmp = client.profile_path.with_suffix(".new")
            tmp.write_text(json.dumps(fixed, indent=2))
            tmp.chmod(0o600)
            tmp.replace(client.profile_path)
            client.proc.send_signal(signal.SIGHUP)
            client.wait_for_state("connected", timeout_s=20)
            assert gw.log_text().count("parsed IKE_SA_INIT request") == 2, gw.log_tail()
            ping_counted_by_gateway(topo, gw, "eap", count=2)
            client.stop()
            assert_no_secret(client.log_path.read_text(errors="replace"), WRONG_PASSWORD,
                             charonmod.EAP_PASSWORD)


# The application (test_events.py style): a profile without a password; the
# password is given in answer to CREDENTIALS_REQUIRED through
# m2mvpn_set_credentials(), from the main thread. Prints "CONNECTED" and
# waits for a line on stdin before it disconnects; then the events as JSON.
APP = r'''
import json, sys, threading
import m2mvpn

events, asked, up = [], threading.Event(), threading.Event()

def on_event(client, ev):
    events.append({"type": m2mvpn.event_name(ev.type), "error": ev.error,
                   "error_name": m2mvpn.error_name(ev.error) if ev.error else "",
                   "detail": ev.detail, "state": m2mvpn.state_name(ev.state)})
    if ev.type == m2mvpn.EventType.CREDENTIALS_REQUIRED:
        asked.set()
    if ev.type == m2mvpn.EventType.STATE_CHANGED and ev.state == m2mvpn.State.CONNECTED:
        up.set()

def log(level, subsystem, message):
    print(f"[{subsystem}] {message}", file=sys.stderr, flush=True)

with m2mvpn.Client(on_event=on_event, log=log, log_level=m2mvpn.LogLevel.DEBUG) as c:
    c.load_profile_file(sys.argv[1])
    c.start()
    c.connect()
    ok = asked.wait(20)
    if ok:
        c.set_credentials(None, sys.argv[2])
        ok = up.wait(20)
    print("CONNECTED" if ok else "FAILED", flush=True)
    sys.stdin.readline()
    c.disconnect()
    c.stop()
print(json.dumps(events))
'''


def test_password_through_credentials_required_event(topology, charons, pki, workdir):
    """An application answers CREDENTIALS_REQUIRED with m2mvpn_set_credentials()
    (Python binding): the tunnel comes up and carries traffic; the password is
    in none of the library's log lines at DEBUG."""
    import os
    import subprocess
    import test_events
    if not test_events.LIB or not os.path.isfile(test_events.LIB):
        pytest.skip("M2MVPN_LIB (the built libm2mvpn) is not set")
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["eap"]), name="gw")
    prof = m2mvpn_client.make_profile(pki, "eap", topo.gw_addr, eap_password=None)
    pf = workdir / "profile.json"
    pf.write_text(__import__("json").dumps(prof))
    app = workdir / "app.py"
    app.write_text(APP)
    env = dict(os.environ, M2MVPN_LIB=test_events.LIB, PYTHONPATH=str(test_events.BINDING),
               PYTHONDONTWRITEBYTECODE="1")
    proc = topo.client.popen(["/usr/bin/python3", str(app), str(pf), charonmod.EAP_PASSWORD],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    try:
        first = proc.stdout.readline().strip()
        if first == "CONNECTED":
            ping_counted_by_gateway(topo, gw, "eap", count=3)
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert first == "CONNECTED", err[-4000:]
    events = __import__("json").loads(out.strip().splitlines()[-1])
    asks = [e for e in events if e["type"] == "CREDENTIALS_REQUIRED"]
    assert len(asks) == 1, events
    assert asks[0]["error_name"] == "CREDENTIALS" and "'dev1'" in asks[0]["detail"], asks
    assert not [e for e in events if e["type"] == "AUTH_FAILED"], events
    assert "EAP credentials set" in err, err[-2000:]
    assert_no_secret(err + out, charonmod.EAP_PASSWORD)
    assert gw.log_text().count("parsed IKE_SA_INIT request") == 1, gw.log_tail()


def test_untrusted_gateway_gets_no_eap_answer(topology, charons, pki, workdir):
    """RFC 7296 §2.16: the gateway's certificate and AUTH are verified before
    EAP is answered. A gateway with an untrusted certificate gets AUTH_PEER
    and not even our EAP identity, let alone an MSCHAPv2 response."""
    binary = binary_or_skip()
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["eap"], ecdsa_cert=pki.gw_untrusted),
                 name="gw")
    profile = m2mvpn_client.make_profile(pki, "eap", topo.gw_addr)
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        client.connect()
        st = wait_until("idle with an error", lambda: (s := client.status())["state"] == "idle"
                        and s["last_error"]["code"] != 0 and s, timeout_s=20)
        assert st["last_error"]["name"] == "AUTH_PEER", st
        glog = gw.log_text()
        # The gateway did ask (its first IKE_AUTH answer carries EAP) ...
        assert "IKE_AUTH response 1 [ IDr CERT AUTH EAP/REQ/ID ]" in glog, gw.log_tail()
        # ... and got no EAP response from us.
        assert "EAP/RES" not in glog, gw.log_tail()
        assert_no_secret(client.log_path.read_text(errors="replace"), charonmod.EAP_PASSWORD)


def test_manual_profile_asks_again_instead_of_resending(topology, charons, pki, workdir):
    """A manual profile whose password was refused: the next `connect` does
    not send it again but asks for credentials (the service logs the
    request for `m2mvpn login`); login then connects."""
    binary = binary_or_skip()
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["eap"]), name="gw")
    profile = m2mvpn_client.make_profile(pki, "eap", topo.gw_addr, eap_password=WRONG_PASSWORD)
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        client.connect()
        wait_until("idle with AUTH_LOCAL", lambda: (s := client.status())["state"] == "idle"
                   and s["last_error"]["name"] == "AUTH_LOCAL", timeout_s=20)
        assert gw.log_text().count("parsed IKE_SA_INIT request") == 1, gw.log_tail()
        client.connect()
        wait_until("the service asks for credentials",
                   lambda: "needs a user name and password" in client.log_path.read_text(errors="replace"),
                   timeout_s=10)
        time.sleep(2)
        assert gw.log_text().count("parsed IKE_SA_INIT request") == 1, gw.log_tail()
        assert client.status()["state"] == "connecting"
        client.login(charonmod.EAP_IDENTITY, charonmod.EAP_PASSWORD)
        client.wait_for_state("connected", timeout_s=20)
        ping_counted_by_gateway(topo, gw, "eap", count=2)
        client.stop()
        assert_no_secret(client.log_path.read_text(errors="replace"), WRONG_PASSWORD, charonmod.EAP_PASSWORD)


def test_credentials_given_before_connect(topology, charons, pki, workdir):
    """`m2mvpn login` before `connect` presets the credentials: a profile
    without a password connects without asking."""
    binary = binary_or_skip()
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["eap"]), name="gw")
    profile = m2mvpn_client.make_profile(pki, "eap", topo.gw_addr, eap_password=None)
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        client.login(charonmod.EAP_IDENTITY, charonmod.EAP_PASSWORD)
        assert client.status()["state"] == "idle"
        client.connect()
        client.wait_for_state("connected", timeout_s=20)
        ping_counted_by_gateway(topo, gw, "eap", count=2)
        client.stop()
        log = client.log_path.read_text(errors="replace")
        assert "needs a user name and password" not in log, client.log_tail()
        assert_no_secret(log, charonmod.EAP_PASSWORD)
