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
