# SPDX-License-Identifier: Apache-2.0
"""The harness proves itself: strongSwan client <-> strongSwan gateway.

This is the baseline the project measures its own client against. Each
connection test checks, on both charons, that the IKE SA is ESTABLISHED with
the algorithms the client asked for, the CHILD SA is INSTALLED with the
expected ESP algorithms, the client got a virtual IP from the pool, and that
ICMP through the tunnel (libipsec's ipsec0) reaches the gateway's protected
address and is counted by both CHILD SAs.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time

import pytest

import charon as charonmod
import m2mvpn_client
import netlab
import pki as pkimod

# Short retransmissions for the clients so a test that must fail fails fast.
FAST_FAIL = {"retransmit_tries": 1, "retransmit_timeout": 1.0, "retransmit_base": 1.4}


def _ike_algs(sa: dict) -> tuple:
    return (sa.get("encr-alg"), sa.get("encr-keysize"), sa.get("integ-alg"),
            sa.get("prf-alg"), sa.get("dh-group"))


def _child_algs(child: dict) -> tuple:
    return (child.get("protocol"), child.get("encr-alg"), child.get("encr-keysize"),
            child.get("integ-alg"))


def connect_and_check(topo: netlab.Topology, gw: charonmod.Charon, cl: charonmod.Charon, *,
                      gw_conn: str, ike_algs: tuple, child_algs: tuple) -> tuple[dict, dict]:
    """Initiate from cl, check both sides and traffic; return (client SA, gateway SA)."""
    cl.initiate("net")
    cl_sa = cl.wait_for_sa("gw", "net", timeout_s=10)
    gw_sa = gw.wait_for_sa(gw_conn, "net", timeout_s=10)

    assert _ike_algs(cl_sa) == ike_algs
    assert _ike_algs(gw_sa) == ike_algs
    assert cl_sa["remote-id"] == pkimod.GATEWAY_ID
    assert gw_sa["remote-id"] == pkimod.CLIENT_ID
    cl_child, gw_child = charonmod.child_of(cl_sa), charonmod.child_of(gw_sa)
    assert _child_algs(cl_child) == child_algs
    assert _child_algs(gw_child) == child_algs
    assert cl_child["spi-in"] == gw_child["spi-out"]
    assert cl_child["spi-out"] == gw_child["spi-in"]

    vips = cl_sa.get("local-vips", [])
    assert len(vips) == 1, vips
    vip = ipaddress.ip_address(vips[0])
    assert vip in ipaddress.ip_network(netlab.VIP_POOL)
    assert gw_sa.get("remote-vips") == vips
    assert cl_child["local-ts"] == [f"{vip}/32"]
    assert cl_child["remote-ts"] == [netlab.PROTECTED_NET]

    # Traffic: the protected address answers through the tunnel, and both
    # CHILD SAs count it (so it did not leak around the tunnel).
    assert netlab.ping(topo.client, netlab.PROTECTED_ADDRS[0], count=3, size=200) == 3
    cl_child = charonmod.child_of(cl.wait_for_sa("gw", "net"))
    gw_child = charonmod.child_of(gw.wait_for_sa(gw_conn, "net"))
    for child in (cl_child, gw_child):
        assert int(child["packets-in"]) >= 3 and int(child["packets-out"]) >= 3, child
        assert int(child["bytes-in"]) >= 3 * 200, child
    return cl_sa, gw_sa


# -- the test network itself ---------------------------------------------------------

def test_pki_chains_verify_and_untrusted_does_not(pki):
    pkimod.verify(pki)
    bad = subprocess.run(["openssl", "verify", "-CAfile", str(pki.root_ca),
                          str(pki.gw_untrusted.cert)], capture_output=True, text=True)
    assert bad.returncode != 0
    rsa_alone = subprocess.run(["openssl", "verify", "-CAfile", str(pki.root_ca),
                                str(pki.gw_rsa.cert)], capture_output=True, text=True)
    assert rsa_alone.returncode != 0, "gw-rsa must need the intermediate"
    for p12, password in ((pki.dev1_ecdsa_p12, pkimod.P12_PASSWORD),
                          (pki.dev1_ecdsa_p12_nopass, ""),
                          (pki.dev1_rsa_p12, pkimod.P12_PASSWORD)):
        out = subprocess.run(["openssl", "pkcs12", "-in", str(p12), "-passin",
                              f"pass:{password}", "-nokeys", "-clcerts"],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert f"CN = {pkimod.CLIENT_ID}" in out.stdout
    wrong = subprocess.run(["openssl", "pkcs12", "-in", str(pki.dev1_ecdsa_p12),
                            "-passin", "pass:wrong", "-nokeys"], capture_output=True)
    assert wrong.returncode != 0


def test_fragment_dropping_path_drops_large_udp_only(topology):
    topo = topology("fragdrop")
    got = netlab.udp_probe(topo.client, topo.gateway, topo.gw_addr, [100, 3000, 1400, 4000])
    assert sorted(got) == [100, 1400]
    got = netlab.udp_probe(topo.gateway, topo.client, topo.client_addr, [200, 3000])
    assert got == [200]


def test_direct_path_passes_large_udp(topology):
    topo = topology("direct")
    got = netlab.udp_probe(topo.client, topo.gateway, topo.gw_addr, [100, 3000])
    assert sorted(got) == [100, 3000]
    assert netlab.ping(topo.client, topo.gw_addr, count=1) == 1


def test_nat_path_hides_client_address(topology):
    topo = topology("nat")
    sink = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("198.51.100.1", 40001)); s.settimeout(5)
print("ready", flush=True)
print(s.recvfrom(100)[1][0], flush=True)
"""
    proc = topo.gateway.popen([netlab.PYTHON, "-c", sink], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    topo.client.run(netlab.PYTHON, "-c",
                    "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                    ".sendto(b'x', ('198.51.100.1', 40001))")
    seen = proc.communicate(timeout=10)[0].strip()
    assert seen == netlab.ROUTER_GW_SIDE


def test_topology_cleanup_removes_namespaces():
    topo = netlab.nat()
    names = [ns.name for ns in topo.namespaces]
    proc = topo.client.popen(["sleep", "60"])
    assert set(names) <= set(netlab.list_namespaces())
    topo.close()
    assert not set(names) & set(netlab.list_namespaces())
    assert proc.poll() is not None


def test_sweep_removes_what_a_killed_run_left(tmp_path):
    """A run killed with SIGKILL cannot clean up; the next run's sweep does,
    including processes still running in the namespace."""
    orphan = tmp_path / "orphan.pid"
    script = (
        "import os, subprocess, sys, time\n"
        f"sys.path.insert(0, {str(netlab.__file__.rsplit('/', 1)[0])!r})\n"
        "import netlab\n"
        "ns = netlab.Namespace('orphan')\n"
        "p = subprocess.Popen(ns.argv('sleep', '60'))\n"
        f"open({str(orphan)!r}, 'w').write(str(p.pid))\n"
        "print(ns.name, flush=True)\n"
        "time.sleep(60)\n")
    proc = subprocess.Popen([netlab.PYTHON, "-c", script], stdout=subprocess.PIPE, text=True)
    name = proc.stdout.readline().strip()
    assert name.startswith(f"{netlab.PREFIX}{proc.pid}-")
    proc.kill()
    proc.wait()
    sleeper = int(orphan.read_text())
    assert name in netlab.list_namespaces()
    assert not netlab._is_zombie(sleeper)
    removed = netlab.sweep_stale()
    assert name in removed
    assert name not in netlab.list_namespaces()
    deadline = time.monotonic() + 5
    while not netlab._is_zombie(sleeper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert netlab._is_zombie(sleeper), "process in the stale namespace survived"


# -- strongSwan client <-> strongSwan gateway ------------------------------------------

def test_psk_direct(topology, charons, pki):
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki), name="gw")
    cl = charons(topo.client, charonmod.client_config(
        pki, "psk", topo.gw_addr, ike_proposals=["aes256gcm16-prfsha384-x25519"],
        esp_proposals=["aes256gcm16"]), name="cl")
    cl_sa, gw_sa = connect_and_check(
        topo, gw, cl, gw_conn="psk",
        ike_algs=("AES_GCM_16", "256", None, "PRF_HMAC_SHA2_384", "CURVE_25519"),
        child_algs=("ESP", "AES_GCM_16", "256", None))
    assert gw_sa["remote-host"] == topo.client_addr
    assert "nat-local" not in cl_sa  # no NAT on this path


def test_ecdsa_certs_direct(topology, charons, pki):
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki), name="gw")
    cl = charons(topo.client, charonmod.client_config(
        pki, "ecdsa", topo.gw_addr, ike_proposals=["aes128gcm16-prfsha256-ecp256"],
        esp_proposals=["chacha20poly1305"]), name="cl")
    connect_and_check(
        topo, gw, cl, gw_conn="ecdsa",
        ike_algs=("AES_GCM_16", "128", None, "PRF_HMAC_SHA2_256", "ECP_256"),
        child_algs=("ESP", "CHACHA20_POLY1305", None, None))
    assert 'received end entity cert "O=m2mvpn test, CN=gw.m2m.test"' in cl.log_text()
    assert "authentication of 'gw.m2m.test' with ECDSA" in cl.log_text()


def test_rsa_intermediate_over_fragment_dropping_path(topology, charons, pki):
    """IKE_AUTH carries RSA-3072 certs and the intermediate: it only fits the
    fragment-dropping path as IKE fragments (RFC 7383)."""
    topo = topology("fragdrop")
    gw = charons(topo.gateway, charonmod.gateway_config(pki), name="gw")
    cl = charons(topo.client, charonmod.client_config(
        pki, "rsa", topo.gw_addr, ike_proposals=["aes256-sha256-modp2048"],
        esp_proposals=["aes256-sha256"]), name="cl")
    connect_and_check(
        topo, gw, cl, gw_conn="rsa",
        ike_algs=("AES_CBC", "256", "HMAC_SHA2_256_128", "PRF_HMAC_SHA2_256", "MODP_2048"),
        child_algs=("ESP", "AES_CBC", "256", "HMAC_SHA2_256_128"))
    cl_log, gw_log = cl.log_text(), gw.log_text()
    assert 'received issuer cert "O=m2mvpn test, CN=m2m test intermediate CA"' in cl_log
    assert "authentication of 'gw.m2m.test' with RSA" in cl_log
    assert "splitting IKE message" in cl_log
    assert "splitting IKE message" in gw_log


def test_rsa_without_ike_fragmentation_fails_on_fragment_dropping_path(topology, charons, pki):
    """Control for the test above: the same exchange without IKE
    fragmentation does not get through, so the path really drops fragments."""
    topo = topology("fragdrop")
    gw = charons(topo.gateway, charonmod.gateway_config(pki), name="gw")
    cl = charons(topo.client, charonmod.client_config(
        pki, "rsa", topo.gw_addr, fragmentation=False), name="cl", options=FAST_FAIL)
    with pytest.raises(charonmod.CharonError):
        cl.initiate("net", timeout_s=15)
    assert not [sa for sa in cl.list_sas() if sa.get("state") == "ESTABLISHED"]
    assert "giving up after 1 retransmits" in cl.log_text()
    assert "parsed IKE_SA_INIT request" in gw.log_text()
    assert "parsed IKE_AUTH request" not in gw.log_text()


def test_psk_through_nat(topology, charons, pki):
    topo = topology("nat")
    gw = charons(topo.gateway, charonmod.gateway_config(pki), name="gw")
    cl = charons(topo.client, charonmod.client_config(pki, "psk", topo.gw_addr), name="cl")
    cl_sa, gw_sa = connect_and_check(
        topo, gw, cl, gw_conn="psk",
        ike_algs=("AES_GCM_16", "256", None, "PRF_HMAC_SHA2_384", "CURVE_25519"),
        child_algs=("ESP", "AES_GCM_16", "256", None))
    # The gateway sees the router's address; the client detected its own NAT
    # (RFC 7296 2.23) and both use UDP encapsulation on port 4500 (RFC 3948).
    assert gw_sa["remote-host"] == netlab.ROUTER_GW_SIDE
    assert cl_sa.get("nat-local") == "yes"
    assert cl_sa["remote-port"] == "4500"
    assert charonmod.child_of(cl_sa)["encap"] == "yes"


def test_mobike_roaming_to_second_uplink(topology, charons, pki):
    """The baseline for roaming (DESIGN.md 7): the preferred uplink goes away,
    the same IKE SA moves to the other one with MOBIKE (RFC 4555)."""
    topo = topology("multihomed")
    gw = charons(topo.gateway, charonmod.gateway_config(pki), name="gw")
    cl = charons(topo.client, charonmod.client_config(pki, "psk", topo.gw_addr), name="cl")
    _, before = connect_and_check(
        topo, gw, cl, gw_conn="psk",
        ike_algs=("AES_GCM_16", "256", None, "PRF_HMAC_SHA2_384", "CURVE_25519"),
        child_algs=("ESP", "AES_GCM_16", "256", None))
    assert before["remote-host"] == netlab.CLIENT_UPLINKS[0][1]
    t0 = time.monotonic()
    netlab.drop_client_uplink(topo, "eth0")
    while netlab.ping(topo.client, netlab.PROTECTED_ADDRS[0], count=1, timeout_s=1) != 1:
        assert time.monotonic() - t0 < 10, "no traffic 10 s after losing eth0" + cl.log_tail()
    after = gw.wait_for_sa("psk", "net")
    assert after["remote-host"] == netlab.CLIENT_UPLINKS[1][1]
    for key in ("uniqueid", "initiator-spi", "responder-spi"):
        assert after[key] == before[key], key   # the same IKE SA, not a new one
    assert "requesting address change using MOBIKE" in cl.log_text()


def test_loss_rule_drops_forwarded_packets(topology):
    topo = topology("nat")
    assert netlab.ping(topo.client, topo.gw_addr, count=2) == 2
    netlab.add_loss(topo.router, 100)
    assert netlab.ping(topo.client, topo.gw_addr, count=2, timeout_s=3) == 0
    topo.router.run("nft", "delete", "table", "ip", "m2i_loss")
    assert netlab.ping(topo.client, topo.gw_addr, count=2) == 2
    with pytest.raises(ValueError):
        netlab.add_loss(topo.router, 101)
    netlab.add_loss(topo.router, 30, table="m2i_loss30")
    listed = topo.router.run("nft", "list", "table", "ip", "m2i_loss30").stdout
    assert "numgen random mod 100 < 30" in listed


def test_gateway_initiated_child_rekey(topology, charons, pki):
    """Baseline for rekey tests: the gateway rekeys the CHILD SA, new SPIs
    replace the old ones on both sides and traffic goes on."""
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki), name="gw")
    cl = charons(topo.client, charonmod.client_config(pki, "psk", topo.gw_addr), name="cl")
    cl_sa, _ = connect_and_check(
        topo, gw, cl, gw_conn="psk",
        ike_algs=("AES_GCM_16", "256", None, "PRF_HMAC_SHA2_384", "CURVE_25519"),
        child_algs=("ESP", "AES_GCM_16", "256", None))
    old_spi = charonmod.child_of(cl_sa)["spi-in"]
    mark = len(gw.log_text())
    gw.rekey(child="net")
    gw.wait_for_log("closing CHILD_SA net", after=mark)
    deadline = time.monotonic() + 10
    while True:   # the client deletes the old SA when the gateway's DELETE arrives
        children = list(cl.wait_for_sa("gw", "net")["child-sas"].values())
        if len(children) == 1 and children[0]["spi-in"] != old_spi:
            break
        assert time.monotonic() < deadline, f"old CHILD SA not replaced: {children}"
        time.sleep(0.1)
    assert children[0]["state"] == "INSTALLED"
    assert netlab.ping(topo.client, netlab.PROTECTED_ADDRS[0], count=2) == 2
    with pytest.raises(ValueError):
        gw.rekey()


def test_eap_mschapv2(topology, charons, pki):
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki), name="gw")
    cl = charons(topo.client, charonmod.client_config(pki, "eap", topo.gw_addr), name="cl")
    _, gw_sa = connect_and_check(
        topo, gw, cl, gw_conn="eap",
        ike_algs=("AES_GCM_16", "256", None, "PRF_HMAC_SHA2_384", "CURVE_25519"),
        child_algs=("ESP", "AES_GCM_16", "256", None))
    assert gw_sa.get("remote-eap-id") == charonmod.EAP_IDENTITY


def test_untrusted_gateway_cert_is_rejected(topology, charons, pki):
    topo = topology("direct")
    charons(topo.gateway, charonmod.gateway_config(pki, conns=["ecdsa"],
                                                   ecdsa_cert=pki.gw_untrusted), name="gw")
    cl = charons(topo.client, charonmod.client_config(pki, "ecdsa", topo.gw_addr),
                 name="cl", options=FAST_FAIL)
    with pytest.raises(charonmod.CharonError):
        cl.initiate("net", timeout_s=15)
    assert "no trusted ECDSA public key found for 'gw.m2m.test'" in cl.log_text()


# -- our own client ----------------------------------------------------------------

@pytest.mark.needs_m2mvpn
@pytest.mark.parametrize("auth,p12", [("psk", False), ("ecdsa", False), ("ecdsa", True),
                                      ("rsa", False), ("rsa", True), ("eap", False)])
def test_m2mvpn_accepts_harness_profiles(topology, pki, workdir, auth, p12):
    """make_profile() output loads in the real engine: `run` serves it and
    `status --json` reports it idle (manual mode)."""
    binary = m2mvpn_client.find_binary()
    if binary is None:
        pytest.skip("tools/m2mvpn not built yet (set M2MVPN_BINARY): our client is not tested")
    topo = topology("direct")
    profile = m2mvpn_client.make_profile(pki, auth, topo.gw_addr, p12=p12)
    with m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile) as client:
        st = client.status()
        assert (st["state"], st["profile"]) == ("idle", "interop")


@pytest.mark.needs_m2mvpn
def test_m2mvpn_client_psk(topology, charons, pki, workdir):
    binary = m2mvpn_client.find_binary()
    if binary is None:
        pytest.skip("tools/m2mvpn not built yet (set M2MVPN_BINARY): our client is not tested")
    topo = topology("direct")
    gw = charons(topo.gateway, charonmod.gateway_config(pki), name="gw")
    profile = m2mvpn_client.make_profile(pki, "psk", topo.gw_addr)
    client = m2mvpn_client.M2mvpnClient(topo.client, binary, workdir / "m2mvpn", profile)
    try:
        client.start()
        client.connect()
        st = client.wait_for_state("connected", timeout_s=20)
        assert st["state"] == "connected"
        gw_sa = gw.wait_for_sa("psk", "net", timeout_s=10)
        assert gw_sa["remote-id"] == pkimod.CLIENT_ID
        assert netlab.ping(topo.client, netlab.PROTECTED_ADDRS[0], count=3) == 3
        gw_child = charonmod.child_of(gw.wait_for_sa("psk", "net"))
        assert int(gw_child["packets-in"]) >= 3, gw_child
    finally:
        client.stop()


# -- the charon driver ----------------------------------------------------------------

SAMPLE_LIST_SAS = """\
list-sa event {
  gw {
    uniqueid = 1
    state = ESTABLISHED
    local-host = 198.51.100.10
    encr-alg = AES_GCM_16
    encr-keysize = 256
    local-vips = [
      198.18.10.1
    ]
    child-sas {
      net-1 {
        name = net
        state = INSTALLED
        encr-alg = AES_GCM_16
        bytes-in = 840
        local-ts = [
          198.18.10.1/32
        ]
        remote-ts = [
          198.18.0.0/24
          198.18.1.0/24
        ]
      }
    }
  }
}
list-sa event {
  gw {
    uniqueid = 2
    state = CONNECTING
    child-sas {
    }
  }
}
list-sas reply {
}
"""


def test_list_sas_parser():
    sas = charonmod.sas_from_messages(charonmod.parse_pretty(SAMPLE_LIST_SAS))
    assert [(sa["name"], sa["uniqueid"], sa["state"]) for sa in sas] == [
        ("gw", "1", "ESTABLISHED"), ("gw", "2", "CONNECTING")]
    assert sas[0]["local-vips"] == ["198.18.10.1"]
    child = charonmod.child_of(sas[0])
    assert (child["state"], child["bytes-in"]) == ("INSTALLED", "840")
    assert child["remote-ts"] == ["198.18.0.0/24", "198.18.1.0/24"]
    with pytest.raises(KeyError):
        charonmod.child_of(sas[1])
    with pytest.raises(ValueError):
        charonmod.parse_pretty("list-sa event {\n  gw {\n")
    with pytest.raises(ValueError):
        charonmod.parse_pretty("}\n")


def test_render_conf_one_key_per_line():
    text = charonmod.render_conf({"connections": {"gw": {"proposals": ["a", "b"], "mobike": False,
                                                        "local": {"auth": "psk"}}}})
    assert text == ("connections {\n    gw {\n        proposals = a, b\n        mobike = no\n"
                    "        local {\n            auth = psk\n        }\n    }\n}\n")
    with pytest.raises(ValueError):
        charonmod.render_conf({"secret": "a}b"})


def test_charon_has_private_run_and_leaves_nothing(topology, pki, workdir):
    topo = topology("direct")
    gw = charonmod.Charon(topo.gateway, workdir / "gw", charonmod.gateway_config(pki), name="gw")
    root_run = set(os.listdir("/run"))
    with gw:
        pid = gw.pid
        inside = subprocess.run(["nsenter", "-t", str(pid), "-m", "ls", "/run"],
                                capture_output=True, text=True, check=True).stdout.split()
        assert "charon.vici" in inside and "charon.pid" in inside
        assert set(os.listdir("/run")) == root_run  # nothing leaked into our /run
        assert {sa["name"] for sa in gw.list_sas()} == set()
        conns = gw.swanctl("--list-conns").stdout
        for name in ("psk:", "ecdsa:", "rsa:", "eap:"):
            assert name in conns
    assert gw.proc.returncode is not None
    assert not os.path.exists(f"/proc/{pid}")
    assert "SIGTERM received, shutting down" in gw.log_text()
