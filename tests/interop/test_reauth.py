# SPDX-License-Identifier: Apache-2.0
"""Reauthentication against strongSwan (RFC 7296 §2.8.3), make-before-break.

What a user checks: with ike.reauth_s set, the client builds a new IKE SA
(a full IKE_SA_INIT and IKE_AUTH, the gateway lists new SPIs each time) and
CHILD SA next to the old ones, moves the traffic and only then deletes the
old IKE SA: a ping flood across several reauthentications loses nothing,
the status stays connected (no reconnect), the kill switch holds (no
plaintext for the protected network on the underlay), and the gateway is
left with one IKE SA and one CHILD SA, the ones the client uses.
"""

from __future__ import annotations

import time

import pytest

import charon as charonmod
import m2mvpn_client
import netlab

pytestmark = pytest.mark.needs_m2mvpn

PROTECTED = netlab.PROTECTED_ADDRS[0]
LEAK_FILTER = "net 198.18.0.0/15"
MARKER = (netlab.GW_ADDR, 9)
def binary_or_skip():
    binary = m2mvpn_client.find_binary()
    if binary is None:
        pytest.skip("tools/m2mvpn not built (set M2MVPN_BINARY): our client is not tested")
    return binary


def gateway_sas(gw, conn: str) -> list[dict]:
    return [s for s in gw.list_sas() if s.get("name") == conn]


@pytest.mark.parametrize("auth", ["psk", "ecdsa"])
def test_reauth_make_before_break(topology, charons, pki, workdir, auth):
    """reauth_s 10 (the smallest allowed): due at 8..9 s after each IKE SA
    came up; over 34 s of a ping flood (every 10 ms) at least 3
    reauthentications."""
    binary = binary_or_skip()
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=[auth]), name="gw")
    prof = m2mvpn_client.make_profile(pki, auth, topo.gw_addr, kill_switch=True)
    prof["ike"]["reauth_s"] = 10
    client = m2mvpn_client.start_m2mvpn_client(topo.client, prof, binary, workdir / "c")
    try:
        client.connect()
        client.wait_for_state("connected")
        gw.wait_for_sa(auth, "net")
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2
        st0 = client.status()
        first = st0["child_sa"]
        ike_spis: set[str] = set()
        max_ike = 0
        duration = 34
        with netlab.Capture(topo.client, "eth0", workdir / "reauth.pcap", marker=MARKER) as cap:
            flood = netlab.PingFlood(topo.client, PROTECTED, duration_s=duration)
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline:
                sas = gateway_sas(gw, auth)
                max_ike = max(max_ike, len(sas))
                ike_spis.update(s["initiator-spi"] + "/" + s["responder-spi"] for s in sas)
                st = client.status()
                assert st["state"] == "connected", st
                time.sleep(0.5)
            # the reauthentications so far, then the gateway's SAs once more:
            # each one counted has its new IKE SA listed by then
            log = client.log_path.read_text(errors="replace")
            ike_spis.update(s["initiator-spi"] + "/" + s["responder-spi"] for s in gateway_sas(gw, auth))
            res = flood.result()
        reauths = log.count("[conn] IKE SA reauthenticated: ")
        assert reauths >= 3, reauths
        # A new IKE SA each time (its SPIs), listed next to the old one for a moment at most.
        assert len(ike_spis) >= reauths + 1, (reauths, ike_spis)
        assert max_ike <= 2, max_ike
        leaks = cap.read(LEAK_FILTER)
        assert not leaks, leaks[:10]
        st = client.status()
        # Zero loss, in every build: the gateway sends on the new CHILD SA as
        # soon as it answered IKE_AUTH; what arrives before the client has
        # processed that answer waits for the SA (esp_datapath_expect_spi).
        assert res["lost"] == 0, (res, reauths, st["counters"])
        assert st["state"] == "connected"
        assert st["transitions"]["reconnects"] == 0, st["transitions"]
        assert st["transitions"]["rekeys"] >= reauths, st["transitions"]
        assert st["child_sa"]["spi_in"] != first["spi_in"]
        # The gateway settles on one IKE SA with one CHILD SA: the client's.
        end = time.monotonic() + 15
        while True:
            sas = gateway_sas(gw, auth)
            children = list(sas[0]["child-sas"].values()) if len(sas) == 1 else []
            if len(children) == 1 and children[0].get("state") == "INSTALLED":
                break
            assert time.monotonic() < end, sas
            time.sleep(0.2)
        st = client.status()
        assert st["child_sa"]["spi_in"] == children[0]["spi-out"], (st["child_sa"], children)
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2
        print("reauthentications", reauths, "IKE SAs seen", len(ike_spis), "ping flood", res)
    finally:
        client.stop()


def test_reauth_sends_a_renewed_certificate(topology, charons, pki, workdir):
    """The certificate file is renewed while the tunnel is up (same key, a
    later notAfter): the next reauthentication reads it and authenticates
    with it (the gateway accepts the new IKE SA), and the status shows it;
    the tunnel stays up meanwhile."""
    import shutil
    import subprocess

    import pki as pkimod

    binary = binary_or_skip()
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki, conns=["ecdsa"]), name="gw")
    own = workdir / "cred"
    own.mkdir()
    cert, key = own / "dev1.crt.pem", own / "dev1.key.pem"
    shutil.copy(pki.dev1_ecdsa.cert, cert)
    shutil.copy(pki.dev1_ecdsa.key, key)
    prof = m2mvpn_client.make_profile(pki, "ecdsa", topo.gw_addr)
    prof["auth"]["cert"] = {"source": "file", "file": str(cert), "key": str(key)}
    prof["ike"]["reauth_s"] = 20
    client = m2mvpn_client.start_m2mvpn_client(topo.client, prof, binary, workdir / "c")
    try:
        client.connect()
        client.wait_for_state("connected")
        gw.wait_for_sa("ecdsa", "net")
        before = client.status()["credential"]["not_after"]
        time.sleep(2)   # a later notAfter, to the second
        csr = own / "renew.csr"
        subprocess.run(["openssl", "req", "-new", "-key", str(key), "-subj", f"/CN={pkimod.CLIENT_ID}",
                        "-out", str(csr)], check=True, capture_output=True)
        renewed = pkimod.issue_from_csr(pki, csr, own / "renewed.crt.pem")
        shutil.copy(renewed, cert)
        deadline = time.monotonic() + 30
        while "[conn] IKE SA reauthenticated: " not in client.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, client.log_tail()
            assert client.status()["state"] == "connected"
            time.sleep(0.2)
        st = client.status()
        assert st["state"] == "connected"
        assert st["credential"]["not_after"] > before, (before, st["credential"])
        sa = gw.wait_for_sa("ecdsa", "net")
        assert netlab.ping(topo.client, PROTECTED, count=2) == 2
        print("certificate notAfter", before, "->", st["credential"]["not_after"], "gateway SA", sa["uniqueid"])
    finally:
        client.stop()
