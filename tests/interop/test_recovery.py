# SPDX-License-Identifier: Apache-2.0
"""Nobody at the device: gateway failover, and a PIN-protected key.

- An always-on profile whose first gateway does not answer fails over to the
  next one in the list by itself.
- A protected .p12 without its PIN in the profile waits for `m2mvpn pin`;
  the right PIN connects. A wrong PIN is refused once and never retried
  (smartcards and TPMs lock out): the tunnel stays down with error PIN.
"""

from __future__ import annotations

import time

import pytest

import charon as charonmod
import m2mvpn_client
import netlab
import pki as pkimod

pytestmark = pytest.mark.skipif(m2mvpn_client.find_binary() is None,
                                reason="M2MVPN_BINARY (tools/m2mvpn) is not built")
PROTECTED = netlab.PROTECTED_ADDRS[0]
SILENT_GW = "198.51.100.99"   # on the link, but nobody there


def test_failover_to_the_next_gateway(topology, charons, pki, workdir):
    topo = topology("direct")
    charons(topo.gateway, charonmod.gateway_config(pki, conns=["psk"]), name="gw")
    prof = m2mvpn_client.make_profile(pki, "psk", topo.gw_addr, mode="always-on")
    prof["gateways"] = [{"host": SILENT_GW, "port": 500}, {"host": topo.gw_addr, "port": 500}]
    prof["ike"].update({"retransmit_timeout_s": 0.5, "retransmit_base": 1.5, "retransmit_tries": 1})
    client = m2mvpn_client.start_m2mvpn_client(topo.client, prof, m2mvpn_client.find_binary(), workdir)
    try:
        st = client.wait_for_state("connected", timeout_s=30)
        assert st["gateway"] == f"{topo.gw_addr}:500", st
        assert f"no answer from {SILENT_GW}:500" in client.log_tail(400)
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2
    finally:
        client.stop()


def wait_for_pin_request(client, timeout_s: float = 10) -> None:
    """The service reports the PIN_REQUIRED event in its log."""
    deadline = time.monotonic() + timeout_s
    while "needs a PIN" not in client.log_tail(200):
        assert time.monotonic() < deadline, client.log_tail(40)
        time.sleep(0.1)


def pin_profile(pki, gw_addr: str) -> dict:
    prof = m2mvpn_client.make_profile(pki, "ecdsa", gw_addr, p12=True, p12_password=True)
    del prof["auth"]["cert"]["pin"]     # the device must be told the PIN
    return prof


def test_pin_entered_later_connects(topology, charons, pki, workdir):
    topo = topology("direct")
    charons(topo.gateway, charonmod.gateway_config(pki, conns=["ecdsa"]), name="gw")
    client = m2mvpn_client.start_m2mvpn_client(topo.client, pin_profile(pki, topo.gw_addr),
                                               m2mvpn_client.find_binary(), workdir)
    try:
        client.connect()
        wait_for_pin_request(client)
        assert client.status()["state"] == "connecting"
        client.pin(pkimod.P12_PASSWORD)
        client.wait_for_state("connected", timeout_s=20)
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2
        assert pkimod.P12_PASSWORD not in client.log_tail(2000)  # never logged
    finally:
        client.stop()


def test_wrong_pin_is_not_retried(topology, charons, pki, workdir):
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["ecdsa"]), name="gw")
    prof = pin_profile(pki, topo.gw_addr)
    prof["mode"] = "always-on"   # even always-on must not try again
    client = m2mvpn_client.start_m2mvpn_client(topo.client, prof, m2mvpn_client.find_binary(), workdir)
    try:
        wait_for_pin_request(client)
        client.pin("not-the-pin")
        st = client.wait_for_state("idle", timeout_s=10)
        assert st["last_error"]["name"] == "PIN", st
        assert "wrong PIN" in st["last_error"]["detail"], st
        time.sleep(3)  # long enough for a reconnect attempt, which must not happen
        st = client.status()
        assert st["state"] == "idle" and st["last_error"]["name"] == "PIN", st
        assert gw.list_sas() == []
        assert "not-the-pin" not in client.log_tail(2000)
    finally:
        client.stop()
