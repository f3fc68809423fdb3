# SPDX-License-Identifier: Apache-2.0
"""Liveness both ways (RFC 7296 §2.4) and recovery without a person.

- The gateway's liveness checks (empty INFORMATIONAL requests) are answered,
  so it keeps the tunnel.
- When the gateway stops answering, our own liveness check notices it, an
  always-on profile goes RECONNECTING (TIMEOUT) and, once the path is back,
  connects again by itself; traffic flows again.
"""

from __future__ import annotations

import time

import pytest

import charon as charonmod
import m2mvpn_client
import netlab

pytestmark = pytest.mark.skipif(m2mvpn_client.find_binary() is None,
                                reason="M2MVPN_BINARY (tools/m2mvpn) is not built")
PROTECTED = netlab.PROTECTED_ADDRS[0]
BLOCK = ("table inet m2i_block {\n chain in {\n  type filter hook input priority 0;\n"
         "  udp dport { 500, 4500 } drop\n }\n}\n")


def test_gateway_liveness_checks_are_answered(topology, charons, pki, workdir):
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"], extra={"dpd_delay": "1s"}),
                 name="gw")
    prof = m2mvpn_client.make_profile(pki, "psk", topo.gw_addr)
    prof["ike"]["dpd_s"] = 0  # only the gateway checks here
    client = m2mvpn_client.start_m2mvpn_client(topo.client, prof, m2mvpn_client.find_binary(), workdir)
    try:
        client.connect()
        client.wait_for_state("connected", timeout_s=20)
        # strongSwan logs each answer it parses: at least two rounds answered.
        pos = gw.wait_for_log("parsed INFORMATIONAL response", timeout_s=10)
        gw.wait_for_log("parsed INFORMATIONAL response", timeout_s=10, after=pos)
        assert gw.wait_for_sa("psk", "net")["state"] == "ESTABLISHED"
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2
    finally:
        client.stop()


def test_always_on_recovers_after_the_gateway_was_unreachable(topology, charons, pki, workdir):
    topo = topology("direct")
    charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"]), name="gw")
    prof = m2mvpn_client.make_profile(pki, "psk", topo.gw_addr, mode="always-on", kill_switch=True)
    prof["ike"].update({"dpd_s": 2, "retransmit_timeout_s": 0.5, "retransmit_base": 1.5,
                        "retransmit_tries": 2})
    client = m2mvpn_client.start_m2mvpn_client(topo.client, prof, m2mvpn_client.find_binary(), workdir)
    try:
        # always-on: no connect command.
        client.wait_for_state("connected", timeout_s=20)
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2
        topo.gateway.nft(BLOCK)  # the gateway goes silent
        st = client.wait_for_state("reconnecting", timeout_s=20)
        assert st["last_error"]["name"] == "TIMEOUT", st
        assert "no answer from" in st["last_error"]["detail"], st
        # Meanwhile protected traffic is held back, not sent around the tunnel.
        assert netlab.ping(topo.client, PROTECTED, count=1, timeout_s=2) == 0
        topo.gateway.run("nft", "delete", "table", "inet", "m2i_block")
        st = client.wait_for_state("connected", timeout_s=90)
        assert netlab.ping(topo.client, PROTECTED, count=3) == 3
    finally:
        client.stop()
