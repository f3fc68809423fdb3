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
